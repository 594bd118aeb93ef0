//! Platform matching: an action goes only to a bot whose advertised properties include every
//! `name=value` of the action's platform. A bot may advertise several values for one key
//! (e.g. `OSFamily=Linux` and `OSFamily=linux`).

/// A set of `key=value` properties (an action's requirements or a bot's offer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    /// The first requirement of `self` that `offer` does not satisfy, as `key=value`.
    pub fn first_unmet(&self, offer: &Properties) -> Option<String> {
        self.0
            .iter()
            .find(|(k, v)| !offer.0.iter().any(|(ok, ov)| ok == k && ov == v))
            .map(|(k, v)| format!("{k}={v}"))
    }

    /// Whether `offer` satisfies every requirement of `self`.
    pub fn satisfied_by(&self, offer: &Properties) -> bool {
        self.first_unmet(offer).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &[(&str, &str)]) -> Properties {
        Properties(
            p.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_requirement_must_be_offered() {
        let bot = props(&[
            ("OSFamily", "Linux"),
            ("OSFamily", "linux"),
            ("ISA", "x86-64"),
            ("pool", "a"),
        ]);
        assert!(props(&[]).satisfied_by(&bot));
        assert!(props(&[("OSFamily", "linux"), ("pool", "a")]).satisfied_by(&bot));
        assert_eq!(
            props(&[("OSFamily", "Windows")])
                .first_unmet(&bot)
                .as_deref(),
            Some("OSFamily=Windows")
        );
        assert_eq!(
            props(&[("gpu", "1")]).first_unmet(&bot).as_deref(),
            Some("gpu=1")
        );
    }
}
