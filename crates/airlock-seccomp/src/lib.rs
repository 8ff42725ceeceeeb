//! airlock-seccomp
