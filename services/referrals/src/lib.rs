//! Referral triggers: turns the order stream into a refer-a-friend programme: invites buyers
//! to become advocates, attributes friends' orders to advocates' codes, checks for fraud, and
//! holds rewards through a review window before granting or voiding them.

pub mod domain;
