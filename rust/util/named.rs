//! Enums that have names on the command line, in Python and in reports.

/// Gives an enum `name()` (its canonical name), `parse()` (any of its names, ignoring case and
/// surrounding space) and `Display` (the canonical name), from one table of its variants' names,
/// the canonical one first; a `match`, so a variant without a name does not compile.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            /// The canonical name.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// The variant called `s` (any of its names, case and surrounding space ignored).
            pub fn parse(s: &str) -> Option<$ty> {
                let s = s.trim().to_ascii_lowercase();
                $(
                    if s == $name $(|| s == $alias)* {
                        return Some($ty::$variant);
                    }
                )+
                None
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use named_enum;
