//! Which host environment variables the guest may see, and which it is given.

use crate::PolicyError;

/// `NAME` or `PREFIX_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvPattern {
    Exact(String),
    Prefix(String),
}

impl EnvPattern {
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::EnvPattern {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (name, prefix) = match input.strip_suffix('*') {
            Some(p) => (p, true),
            None => (input, false),
        };
        if name.is_empty() {
            return Err(err(if prefix {
                "a bare * would expose the whole environment; name the variables or a prefix such as APP_*"
            } else {
                "empty name"
            }));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == '-'))
        {
            return Err(err(&format!("{c:?} is not allowed in a variable name")));
        }
        Ok(if prefix {
            EnvPattern::Prefix(name.to_string())
        } else {
            EnvPattern::Exact(name.to_string())
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            EnvPattern::Exact(n) => n == name,
            EnvPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for EnvPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvPattern::Exact(n) => f.write_str(n),
            EnvPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Host variables that pass through, and variables set for the guest.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    pub allow: Vec<EnvPattern>,
    /// Set by `--env NAME=VALUE`; these win over a host value of the same name.
    pub set: Vec<(String, String)>,
}

impl EnvPolicy {
    /// The rule that lets the host's `name` through, if any.
    pub fn allowing(&self, name: &str) -> Option<&EnvPattern> {
        self.allow.iter().find(|p| p.matches(name))
    }

    /// The guest's environment, from the host's variables: granted ones first,
    /// then the explicitly set ones, which replace a granted one of the same name.
    pub fn guest_env(
        &self,
        host: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = host
            .into_iter()
            .filter(|(k, _)| self.allowing(k).is_some())
            .filter(|(k, _)| !self.set.iter().any(|(s, _)| s == k))
            .collect();
        out.sort();
        out.extend(self.set.iter().cloned());
        out
    }
}

pub(crate) fn parse_assignment(input: &str) -> Result<(String, String), PolicyError> {
    match input.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(PolicyError::EnvAssign {
            input: input.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let cases: &[(&str, Option<EnvPattern>)] = &[
            ("HOME", Some(EnvPattern::Exact("HOME".into()))),
            ("APP_*", Some(EnvPattern::Prefix("APP_".into()))),
            ("*", None),
            ("", None),
            ("A=B", None),
            ("A B", None),
        ];
        for (input, want) in cases {
            let got = EnvPattern::parse(input).ok();
            assert_eq!(&got, want, "{input:?}");
            if let Some(p) = got {
                assert_eq!(p.to_string(), *input);
            }
        }
    }

    #[test]
    fn guest_env_only_has_granted_and_set() {
        let policy = EnvPolicy {
            allow: vec![
                EnvPattern::parse("APP_*").unwrap(),
                EnvPattern::parse("LANG").unwrap(),
            ],
            set: vec![("APP_MODE".into(), "test".into())],
        };
        let host = [
            ("APP_KEY", "k"),
            ("APP_MODE", "prod"),
            ("LANG", "C"),
            ("SECRET", "s"),
            ("LANGUAGE", "en"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = policy.guest_env(host);
        assert_eq!(
            env,
            [("APP_KEY", "k"), ("LANG", "C"), ("APP_MODE", "test")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(parse_assignment("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_assignment("=x").is_err());
        assert!(parse_assignment("A").is_err());
    }
}
