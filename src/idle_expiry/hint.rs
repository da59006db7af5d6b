//! Reading what a response says about its connection's future:
//! `Keep-Alive: timeout=N` and `Connection: close`.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, CONNECTION};

/// `Keep-Alive`, not among `http`'s predefined names.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The longest `timeout=` accepted: a day. Larger values are treated as no
/// hint (they are either a misconfiguration or meaningless next to any
/// client's own limit).
pub(crate) const MAX_HINT: Duration = Duration::from_secs(86_400);

/// The idle timeout a response announces in `Keep-Alive: timeout=N`.
///
/// The rule, for any input:
/// * every `Keep-Alive` header line and every comma-separated parameter in
///   it is read; parameter names are case-insensitive, whitespace around
///   names, `=` and values is ignored, and a value may be quoted;
/// * a `timeout` value counts only if it is a non-negative integer number of
///   seconds (ASCII digits only) no larger than [`MAX_HINT`]; anything else
///   (`abc`, `-1`, `1.5`, empty, huge) is ignored;
/// * if several valid `timeout` values appear, the smallest wins;
/// * other parameters (`max=`, extensions) are ignored: a server that
///   counts requests announces the last one with `Connection: close`.
pub(crate) fn keep_alive_timeout(headers: &HeaderMap) -> Option<Duration> {
    let mut best: Option<u64> = None;
    for value in headers.get_all(KEEP_ALIVE) {
        let Ok(value) = value.to_str() else { continue };
        for param in value.split(',') {
            let Some((name, v)) = param.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("timeout") {
                continue;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            if v.is_empty() || v.len() > 8 || !v.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(secs) = v.parse::<u64>() else { continue };
            if secs > MAX_HINT.as_secs() {
                continue;
            }
            best = Some(best.map_or(secs, |b| b.min(secs)));
        }
    }
    best.map(Duration::from_secs)
}

/// Whether the headers have a `Keep-Alive` line and a `Connection` line.
///
/// Most responses have neither and only a few header names: one pass over
/// the names (standard ones compare as enum tags) is cheaper than two hashed
/// lookups. Many names fall back to the lookups.
pub(crate) fn mentions(headers: &HeaderMap) -> (bool, bool) {
    if headers.keys_len() > 12 {
        return (
            headers.contains_key(KEEP_ALIVE),
            headers.contains_key(CONNECTION),
        );
    }
    let (mut keep_alive, mut connection) = (false, false);
    for name in headers.keys() {
        if *name == CONNECTION {
            connection = true;
        } else if *name == KEEP_ALIVE {
            keep_alive = true;
        }
    }
    (keep_alive, connection)
}

/// Whether the response says the connection closes after it
/// (`Connection: close`, any case, among other tokens).
pub(crate) fn connection_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("keep-alive", HeaderValue::from_bytes(line).unwrap());
        }
        map
    }

    #[test]
    fn keep_alive_timeout_table() {
        let secs = |n| Some(Duration::from_secs(n));
        let cases: &[(&[&[u8]], Option<Duration>)] = &[
            (&[], None),
            (&[b"timeout=5"], secs(5)),
            (&[b"timeout=5, max=100"], secs(5)),
            (&[b"max=100, timeout=5"], secs(5)),
            (&[b"TIMEOUT=5"], secs(5)),
            (&[b"Timeout = 7 "], secs(7)),
            (&[b"timeout=\"3\""], secs(3)),
            (&[b"timeout=0"], secs(0)),
            (&[b"timeout=1"], secs(1)),
            (&[b"timeout=abc"], None),
            (&[b"timeout=-1"], None),
            (&[b"timeout=1.5"], None),
            (&[b"timeout="], None),
            (&[b"timeout"], None),
            (&[b"timeout=+5"], None),
            (&[b"timeout=5s"], None),
            (&[b"timeout=86400"], secs(86_400)),
            (&[b"timeout=86401"], None),
            (&[b"timeout=99999999999999999999999"], None),
            (&[b"timeout=18446744073709551616"], None),
            (&[b"max=5"], None),
            (&[b"foo=bar, timeout=9, baz"], secs(9)),
            (&[b"timeout=5, timeout=3"], secs(3)),
            (&[b"timeout=5", b"timeout=2"], secs(2)),
            (&[b"timeout=abc", b"timeout=4"], secs(4)),
            (&[b",,,"], None),
            (&[b"=5"], None),
            (&[b"timeout==5"], None),
            (&[b"\xff\xfe timeout=5"], None),
        ];
        for (lines, want) in cases {
            let got = keep_alive_timeout(&headers(lines));
            assert_eq!(
                got,
                *want,
                "{:?}",
                lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn connection_close_table() {
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["close"], true),
            (&["Close"], true),
            (&["keep-alive"], false),
            (&["keep-alive, close"], true),
            (&["upgrade", "CLOSE"], true),
            (&["closed"], false),
        ];
        for (lines, want) in cases {
            let mut map = HeaderMap::new();
            for l in *lines {
                map.append(CONNECTION, HeaderValue::from_str(l).unwrap());
            }
            assert_eq!(connection_close(&map), *want, "{lines:?}");
        }
    }

    #[test]
    fn mentions_finds_both_names_with_few_and_with_many_headers() {
        for extra in [0usize, 20] {
            let mut map = HeaderMap::new();
            for i in 0..extra {
                map.insert(
                    HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            map.insert("content-length", HeaderValue::from_static("0"));
            assert_eq!(mentions(&map), (false, false), "{extra} fillers");
            map.insert("Keep-Alive", HeaderValue::from_static("timeout=5"));
            assert_eq!(mentions(&map), (true, false), "{extra} fillers");
            map.insert("CONNECTION", HeaderValue::from_static("close"));
            assert_eq!(mentions(&map), (true, true), "{extra} fillers");
            map.remove("keep-alive");
            assert_eq!(mentions(&map), (false, true), "{extra} fillers");
        }
    }
}
