//! airlock-ns
