//! Integration tests: the real `capsa` binary on real guest programs.
//! One test binary, a module per topic (as wasmtime's `tests/all`).

mod bad_input;
mod bundle;
mod cache;
mod cli;
mod env;
mod escapes;
mod fs;
mod fs_model;
mod http;
mod install;
mod layout;
mod limits;
mod mcp;
mod net;
mod pip;
mod python;
mod python_api;
mod serve;
mod support;
mod web;
