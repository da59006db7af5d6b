//! phase_timeout (in progress)
