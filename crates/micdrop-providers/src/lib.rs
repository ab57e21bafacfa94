//! micdrop-providers (work in progress).
