//! (pages: under construction)
