//! micdrop-sim (work in progress).
