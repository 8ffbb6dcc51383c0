//! Where a bucket's credentials come from, and what to say when they cannot
//! be had. The client takes the first source the AWS environment names:
//! static keys, then web identity, then container credentials, then the
//! instance metadata service. With nothing set, that last one is all that
//! is left, and off EC2 nothing answers there: a request fails before it is
//! sent, and retrying it cannot help, so the credentials are fetched (once,
//! cached by the client) before each operation, and a failure to get them is
//! reported as such, naming where the client looked.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// The instance metadata service the client asks when
/// `AWS_METADATA_ENDPOINT` names none.
const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

/// The credential source the AWS environment selects (the client's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    /// Requests are sent unsigned (`AWS_SKIP_SIGNATURE=true`).
    Unsigned,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`).
    Static,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`, exchanged at STS.
    WebIdentity { token_file: String },
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS) or
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (EKS Pod Identity).
    Container { variable: &'static str },
    /// Nothing of the above: the instance metadata service.
    InstanceMetadata { endpoint: String },
}

impl CredentialSource {
    /// The source `builder` (configured from the environment) will use.
    pub(crate) fn of(builder: &AmazonS3Builder) -> Self {
        let set = |key: AmazonS3ConfigKey| {
            builder
                .get_config_value(&key)
                .filter(|value| !value.is_empty())
        };
        if set(AmazonS3ConfigKey::SkipSignature).as_deref() == Some("true") {
            return Self::Unsigned;
        }
        if set(AmazonS3ConfigKey::AccessKeyId).is_some()
            || set(AmazonS3ConfigKey::SecretAccessKey).is_some()
        {
            return Self::Static;
        }
        if let (Some(token_file), Some(_)) = (
            set(AmazonS3ConfigKey::WebIdentityTokenFile),
            set(AmazonS3ConfigKey::RoleArn),
        ) {
            return Self::WebIdentity { token_file };
        }
        if set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri).is_some() {
            return Self::Container {
                variable: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            };
        }
        if set(AmazonS3ConfigKey::ContainerCredentialsFullUri).is_some()
            && set(AmazonS3ConfigKey::ContainerAuthorizationTokenFile).is_some()
        {
            return Self::Container {
                variable: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            };
        }
        Self::InstanceMetadata {
            endpoint: set(AmazonS3ConfigKey::MetadataEndpoint)
                .unwrap_or_else(|| DEFAULT_METADATA_ENDPOINT.to_owned()),
        }
    }

    /// Whether requests need credentials at all.
    pub(crate) fn signs(&self) -> bool {
        *self != Self::Unsigned
    }

    /// Why no credentials could be had: where the client looked, what the
    /// last place answered (`cause`), and what to do.
    pub(crate) fn failure(&self, cause: &str) -> String {
        let (looked, fix) = match self {
            Self::Unsigned | Self::Static => (
                "from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned(),
                "check both variables",
            ),
            Self::WebIdentity { token_file } => (
                format!(
                    "by web identity (the token in AWS_WEB_IDENTITY_TOKEN_FILE={token_file} \
                     exchanged at STS for AWS_ROLE_ARN)"
                ),
                "check the token file, the role's trust policy and that STS can be reached",
            ),
            Self::Container { variable } => (
                format!("from the container credentials endpoint ({variable})"),
                "check the task's or pod's role and that the endpoint can be reached",
            ),
            Self::InstanceMetadata { endpoint } => (
                format!(
                    "in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set), \
                     by web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN: not set), \
                     from container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or \
                     _FULL_URI: not set), then from the instance metadata service at {endpoint}, \
                     which failed"
                ),
                "set credentials in the environment, or run where a role is attached: \
                 an EC2 instance profile, IRSA on EKS",
            ),
        };
        format!(
            "could not obtain AWS credentials: looked {looked}: {cause} \
             (nothing was sent to the bucket; {fix})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(AmazonS3ConfigKey, &str)]) -> CredentialSource {
        let builder = pairs
            .iter()
            .fold(AmazonS3Builder::new(), |builder, (key, value)| {
                builder.with_config(*key, *value)
            });
        CredentialSource::of(&builder)
    }

    #[test]
    fn the_source_is_the_first_the_environment_names() {
        use AmazonS3ConfigKey as K;
        assert_eq!(
            source(&[]),
            CredentialSource::InstanceMetadata {
                endpoint: DEFAULT_METADATA_ENDPOINT.to_owned()
            }
        );
        assert_eq!(
            source(&[(K::MetadataEndpoint, "http://127.0.0.1:1")]),
            CredentialSource::InstanceMetadata {
                endpoint: "http://127.0.0.1:1".to_owned()
            }
        );
        let web = [
            (K::WebIdentityTokenFile, "/var/run/token"),
            (K::RoleArn, "arn:aws:iam::1:role/r"),
        ];
        assert_eq!(
            source(&web),
            CredentialSource::WebIdentity {
                token_file: "/var/run/token".to_owned()
            }
        );
        let mut keys = web.to_vec();
        keys.push((K::AccessKeyId, "id"));
        keys.push((K::SecretAccessKey, "secret"));
        assert_eq!(source(&keys), CredentialSource::Static);
        assert_eq!(
            source(&[(K::ContainerCredentialsRelativeUri, "/v2/credentials/x")]),
            CredentialSource::Container {
                variable: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
            }
        );
        assert!(!source(&[(K::SkipSignature, "true")]).signs());
    }

    #[test]
    fn the_failure_names_where_it_looked_and_blames_no_permission() {
        let source = CredentialSource::InstanceMetadata {
            endpoint: "http://127.0.0.1:1".to_owned(),
        };
        let message = source.failure("connection refused");
        for part in [
            "could not obtain AWS credentials",
            "AWS_ACCESS_KEY_ID",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "instance metadata service at http://127.0.0.1:1",
            "connection refused",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(!message.contains("permission"), "{message}");
    }
}
