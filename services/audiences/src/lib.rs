//! `aftercart audiences`: keeps consented retargeting audiences (abandoners, purchasers,
//! customers) in sync on Meta, Google Ads, TikTok, files and webhooks, each with its own
//! normalisation and hashing.

pub mod domain;
pub mod platform;
