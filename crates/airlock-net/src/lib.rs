//! airlock-net
