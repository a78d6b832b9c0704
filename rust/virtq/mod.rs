//! (virtq: under construction)
