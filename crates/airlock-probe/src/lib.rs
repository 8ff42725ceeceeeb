//! airlock-probe
