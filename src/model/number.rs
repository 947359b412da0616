//! Integers in JSON as clients write them: `455`, `455.0` and `4.55e2` are
//! all 455 (as JSON Schema and JavaScript read them), decided on the
//! literal so that nothing is ever rounded.

/// A JSON number that is an integer from 0 to `max`, however it is written:
/// `455`, `455.0` and `4.55e2` are all 455, as JSON Schema and JavaScript
/// read them. A number written with a fraction or an exponent is decided
/// on its `literal` (the text in the request, asked for only then), never
/// on the float it parses to: `4503599627370496.5` rounds to an integral
/// float, and is refused.
pub fn json_integer(
    value: &serde_json::Value,
    literal: impl FnOnce() -> Option<String>,
    max: u64,
) -> Option<u64> {
    let serde_json::Value::Number(n) = value else {
        return None;
    };
    match n.as_u64() {
        Some(v) => (v <= max).then_some(v),
        None if n.is_f64() => literal().and_then(|l| exact_integer(&l, max)),
        None => None, // a negative integer
    }
}

/// The value of a JSON number literal when it is exactly an integer from 0
/// to `max`: decided on its decimal digits, so nothing is rounded.
pub fn exact_integer(literal: &str, max: u64) -> Option<u64> {
    let (negative, unsigned) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0); // 0, -0, 0.000, 0e5
    }
    if negative {
        return None;
    }
    // Past these bounds a non-zero number is a fraction or beyond any u64.
    let exponent: i64 = match exponent {
        None => 0,
        // `unsigned_abs`: `abs` of i64::MIN overflows (a panic in a debug build).
        Some(e) => e.parse().ok().filter(|e: &i64| e.unsigned_abs() <= 1000)?,
    };
    let shift = exponent - fraction.len() as i64;
    let integer = if shift < 0 {
        let cut = digits.len().checked_sub(shift.unsigned_abs() as usize)?;
        let (kept, dropped) = digits.split_at(cut);
        if !dropped.bytes().all(|b| b == b'0') {
            return None;
        }
        kept.to_owned()
    } else {
        format!(
            "{digits}{}",
            "0".repeat(usize::try_from(shift).ok()?.min(21))
        )
    };
    if integer.is_empty() {
        return None;
    }
    integer.parse::<u64>().ok().filter(|v| *v <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_SAFE_INTEGER;

    #[test]
    fn integers_may_be_written_as_whole_numbers_but_nothing_is_rounded() {
        for (literal, value) in [
            ("455", Some(455)),
            ("455.0", Some(455)),
            ("4.55e2", Some(455)),
            ("4550E-1", Some(455)),
            ("45500e-2", Some(455)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-0.0", Some(0)),
            ("0.000e7", Some(0)),
            ("1e6", Some(1_000_000)),
            ("1.699876543e9", Some(1_699_876_543)),
            ("9007199254740991.0", Some(MAX_SAFE_INTEGER)),
            ("9007199254740992.0", None), // beyond the bound
            ("4503599627370496.5", None), // a float would round it to an integer
            ("1.0000000000000001", None),
            ("1.5", None),
            ("455e-1", None),
            ("5e-1000", None),
            ("-1", None),
            ("-1.0", None),
            ("1e1000", None),
            ("1e400", None),
            ("18446744073709551616", None),
            ("1e19", None),
            // Exponents at the ends of i64: refused, never an overflow.
            ("1.5e-9223372036854775808", None),
            ("1.5e9223372036854775807", None),
            ("1e-9223372036854775809", None),
        ] {
            assert_eq!(exact_integer(literal, MAX_SAFE_INTEGER), value, "{literal}");
        }
        assert_eq!(
            exact_integer("1e19", u64::MAX),
            Some(10_000_000_000_000_000_000)
        );
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let literal = |s: &'static str| move || Some(s.to_owned());
        assert_eq!(json_integer(&v("455.0"), literal("455.0"), 1000), Some(455));
        assert_eq!(json_integer(&v("455"), || None, 1000), Some(455));
        assert_eq!(json_integer(&v("4550"), || None, 1000), None);
        assert_eq!(json_integer(&v("-3"), || None, 1000), None);
        assert_eq!(json_integer(&v("\"3\""), || None, 1000), None);
    }
}
