//! track (in progress)
