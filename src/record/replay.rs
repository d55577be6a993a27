//! `nexor-relay replay FILE`.
