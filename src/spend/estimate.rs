//! The reservation of a create: the model's fixed `reserve_tokens`, else an
//! estimate from the body, else `pricing.default_reserve_tokens`.
//!
//! Tokens ≈ width × height × frames / 1024 (API.md), with frames = `frames`,
//! or `duration` × the model's frame rate + 1 (Ark renders 121 frames for a
//! 5 s clip at 24 fps: 1280 × 720 × 121 / 1024 = 108,900 tokens, the value
//! Ark reports). The area is the largest Ark lists for the resolution across
//! its ratios, so the estimate is never below what Ark reports; an unknown
//! resolution counts as 1080p, the largest.

use serde::Deserialize;

use crate::config::PricingConfig;

/// The largest output area per resolution across Ark's ratios (16:9, 4:3,
/// 1:1, 3:4, 9:16, 21:9): 480p 864×480, 720p 1280×720 (= 960×960),
/// 1080p 1920×1088.
fn max_area(resolution: &str) -> u64 {
    match resolution {
        "480p" => 864 * 480,
        "720p" => 1280 * 720,
        _ => 1920 * 1088,
    }
}

#[derive(Deserialize)]
struct SizeProbe<'a> {
    #[serde(borrow)]
    resolution: Option<std::borrow::Cow<'a, str>>,
    duration: Option<i64>,
    frames: Option<i64>,
}

/// Tokens to reserve for a create of `model` with this body.
pub fn reserve_tokens(pricing: &PricingConfig, model: &str, body: &[u8]) -> u64 {
    let price = pricing.models.get(model);
    if let Some(fixed) = price.and_then(|p| p.reserve_tokens) {
        return fixed;
    }
    let fps = price.map_or(crate::config::DEFAULT_FRAMES_PER_SECOND, |p| p.frames_per_second);
    let Ok(probe) = serde_json::from_slice::<SizeProbe>(body) else {
        return pricing.default_reserve_tokens;
    };
    let frames = match (probe.frames, probe.duration) {
        (Some(frames), _) if frames > 0 => frames as u64,
        (_, Some(seconds)) if seconds > 0 => seconds as u64 * u64::from(fps) + 1,
        // `duration: -1` lets the model choose: nothing to estimate from.
        (_, Some(_)) => return pricing.default_reserve_tokens,
        (None, None) => 5 * u64::from(fps) + 1,
        (Some(_), None) => return pricing.default_reserve_tokens,
    };
    let area = max_area(probe.resolution.as_deref().unwrap_or("1080p"));
    (area * frames).div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelPrice;

    fn pricing() -> PricingConfig {
        let mut p = PricingConfig::default();
        p.models.insert(
            "fixed".into(),
            ModelPrice {
                per_million_tokens: Some(15.0),
                reserve_tokens: Some(1234),
                frames_per_second: 24,
            },
        );
        p
    }

    #[test]
    fn estimates_cover_what_ark_reports() {
        let p = pricing();
        // Ark's observed 108,900 tokens for a 5 s 720p clip.
        assert_eq!(
            reserve_tokens(&p, "m", br#"{"resolution":"720p","duration":5}"#),
            108_900
        );
        assert!(
            reserve_tokens(&p, "m", br#"{"resolution":"720p","ratio":"1:1","duration":5}"#) >= 960 * 960 * 121 / 1024
        );
        assert_eq!(
            reserve_tokens(&p, "m", br#"{"resolution":"480p","frames":29}"#),
            (864 * 480 * 29u64).div_ceil(1024)
        );
        // No resolution: the largest.
        assert_eq!(
            reserve_tokens(&p, "m", br#"{"duration":10}"#),
            (1920 * 1088 * 241u64).div_ceil(1024)
        );
        assert_eq!(reserve_tokens(&p, "m", br#"{"duration":-1}"#), p.default_reserve_tokens);
        assert_eq!(reserve_tokens(&p, "fixed", br#"{"duration":10}"#), 1234);
        assert_eq!(reserve_tokens(&p, "m", b"[]"), p.default_reserve_tokens);
    }
}
