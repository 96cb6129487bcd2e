//! Cart-abandonment segmentation: decides when a shopping journey is abandoned, labels it with
//! the segments marketers act on, and notices when an abandoned journey is recovered.

pub mod domain;
