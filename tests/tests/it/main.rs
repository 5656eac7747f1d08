//! The end-to-end suite: every test starts its own nats-server, database and services.

mod api;
mod broker;
mod compat;
mod database;
mod lease;
mod lifecycle;
mod limits;
mod metrics;
mod priorities;
mod queue;
mod routes;
mod shutdown;
mod traces;
mod webhooks;
mod worker;
