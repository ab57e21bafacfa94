//! micdrop-client (work in progress).
