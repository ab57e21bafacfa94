//! micdrop-server (work in progress).
