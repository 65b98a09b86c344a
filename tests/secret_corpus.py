"""A corpus of fake secrets, one sample per format, planted in the places secrets hide.

Every value is generated here from a seeded random generator in the real format of its kind
(prefix, alphabet, length), so none is a live credential and this file holds no string a secret
scanner would flag. Each sample is rendered into every place that suits it: source code, ``.env``,
YAML, JSON with escaped newlines, a notebook (``.ipynb`` JSON), a Dockerfile, a Kubernetes Secret
(``stringData:`` in plain text and ``data:`` in base64), a README, a commit message and the diff of
an old commit; a token also in pieces (``"ghp_..." + "..."``), and a generic credential also stated
in prose (an issue comment, a wiki page, a commit message: ``the database password is ...``). A
placement is redacted when no part of its secret survives ``redact`` (no run of 12 characters of it,
or the whole of a shorter one).

``python -m tests.secret_corpus`` prints the figure; ``tests/test_secret_corpus.py`` holds it.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from repotune.clean.secrets import redact

ALNUM = string.ascii_letters + string.digits
TOKEN = ALNUM + "-_"
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
UPPER_ALNUM = string.ascii_uppercase + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"


def fake(n: int, alphabet: str = ALNUM, seed: object = 0) -> str:
    """A random-looking string, the same on every run; with letters and digits where the alphabet
    has both (as real random tokens of this length almost always do)."""
    rng = random.Random(f"{seed}:{n}:{alphabet}")
    wants_mix = n >= 8 and any(c.isdigit() for c in alphabet) and any(c.isalpha() for c in alphabet)
    while True:
        value = "".join(rng.choice(alphabet) for _ in range(n))
        if not wants_mix or (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
            return value


def digits(n: int, seed: object = 0) -> str:
    return str(random.Random(f"digits:{seed}:{n}").randrange(10 ** (n - 1), 10**n))


def fake_uuid(seed: object = 0) -> str:
    return str(uuid.UUID(int=random.Random(f"uuid:{seed}").getrandbits(128), version=4))


def password(seed: object = 0) -> str:
    """A password a person would pick: letters, digits and a symbol."""
    return fake(6, string.ascii_letters, seed) + "-" + fake(5, ALNUM, seed) + "7!"


def pem(label: str = "RSA ", seed: object = 0) -> str:
    body = "\n".join(fake(64, B64, f"{seed}:{i}") for i in range(6))
    return (
        f"-----BEGIN {label}PRIVATE KEY-----\n{body}\n{fake(24, B64, seed)}==\n"
        f"-----END {label}PRIVATE KEY-----"
    )


def jwt(seed: object = 0) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(f'{{"sub":"{digits(10, seed)}","name":"ci"}}'.encode()).rstrip(b"=")
    return f"{header}.{payload.decode()}.{fake(43, TOKEN, seed)}"


def discord_bot_token(seed: object = 0) -> str:
    user_id = base64.b64encode(digits(18, seed).encode()).decode().rstrip("=")
    return f"{user_id}.{fake(6, TOKEN, seed)}.{fake(38, TOKEN, seed)}"


@dataclass(frozen=True)
class Sample:
    """One format of secret: its placeholder kind, the text a user writes, and the part to hide."""

    format: str
    kind: str
    value: str
    name: str
    """A variable that would hold it (``GITHUB_TOKEN``): the key in assignments, env files, YAML."""
    style: str = "token"
    """Which places suit it: ``token`` (names itself: anywhere, prose too), ``keyed`` (known by the
    name beside it), ``url`` (a URL or connection string), ``block`` (a multi-line key),
    ``command`` (a shell command), ``file`` (only in the files given in ``extra``)."""
    secret: str = ""
    """The part that must disappear; empty: the whole value."""
    extra: tuple[tuple[str, str], ...] = field(default=())
    """More places: (name, text with ``{value}``)."""
    said: str = ""
    """How prose names it (``database password``): where set, it is also stated in prose."""

    @property
    def hidden(self) -> str:
        return self.secret or self.value


def _samples() -> list[Sample]:
    s: list[Sample] = []

    def token(fmt: str, kind: str, value: str, name: str, **kw: object) -> None:
        s.append(Sample(fmt, kind, value, name, **kw))  # type: ignore[arg-type]

    # Source control and package registries.
    token("GitHub classic PAT", "github_token", "ghp_" + fake(36), "GITHUB_TOKEN")
    token("GitHub fine-grained PAT", "github_token", f"github_pat_{fake(22)}_{fake(59)}", "GH_PAT")
    token("GitHub App installation token", "github_token", "ghs_" + fake(36, seed=1), "GH_APP_TOKEN")
    token("GitLab PAT", "gitlab_token", "glpat-" + fake(20, TOKEN), "GITLAB_TOKEN")
    token("GitLab runner registration token", "gitlab_token", "GR1348941" + fake(20, TOKEN), "RUNNER_TOKEN")
    token("Bitbucket app password", "bitbucket_token", "ATBB" + fake(32), "BITBUCKET_APP_PASSWORD")
    token("npm token", "npm_token", "npm_" + fake(36), "NPM_TOKEN")
    token("PyPI upload token", "pypi_token", "pypi-AgEIcHlwaS5vcmc" + fake(70, TOKEN), "PYPI_TOKEN")
    token("RubyGems API key", "rubygems_token", "rubygems_" + fake(48, HEX), "GEM_HOST_API_KEY")
    token("Clojars token", "clojars_token", "CLOJARS_" + fake(60, LOWER_ALNUM), "CLOJARS_TOKEN")
    token("Docker Hub PAT", "dockerhub_token", "dckr_pat_" + fake(27, TOKEN), "DOCKERHUB_TOKEN")
    token("Artifactory API key", "artifactory_token", "AKCp" + fake(69), "ARTIFACTORY_API_KEY")
    token(
        "Sourcegraph token", "sourcegraph_token", f"sgp_{fake(16, HEX)}_{fake(40, HEX)}", "SRC_ACCESS_TOKEN"
    )
    token("Postman API key", "postman_token", f"PMAK-{fake(24, HEX)}-{fake(34, HEX)}", "POSTMAN_API_KEY")
    token("ReadMe API key", "readme_token", "rdme_" + fake(70, LOWER_ALNUM), "README_API_KEY")
    token("SonarQube token", "sonar_token", "squ_" + fake(40, HEX), "SONAR_TOKEN")
    # Clouds, infrastructure and secret stores.
    token(
        "AWS access key id",
        "aws_access_key",
        "AKIA" + fake(16, string.ascii_uppercase + "234567"),
        "AWS_ACCESS_KEY_ID",
    )
    token(
        "AWS secret access key",
        "aws_secret_key",
        fake(40, B64, seed=2),
        "AWS_SECRET_ACCESS_KEY",
        style="keyed",
    )
    token("AWS session token", "aws_session_token", "IQoJb3JpZ2luX2Vj" + fake(300, B64), "AWS_SESSION_TOKEN")
    token("GCP API key", "gcp_api_key", "AIza" + fake(35, TOKEN), "GOOGLE_API_KEY")
    token("Google OAuth client secret", "google_oauth", "GOCSPX-" + fake(28, TOKEN), "GOOGLE_CLIENT_SECRET")
    token("Google OAuth access token", "google_oauth", "ya29." + fake(120, TOKEN), "GOOGLE_ACCESS_TOKEN")
    token(
        "Entra ID client secret",
        "azure_client_secret",
        fake(3) + "8Q~" + fake(34, ALNUM + "_.-"),
        "AZURE_CLIENT_SECRET",
    )
    token("Alibaba Cloud AccessKey id", "alibaba_access_key", "LTAI" + fake(20), "ALIBABA_ACCESS_KEY_ID")
    token("DigitalOcean PAT", "digitalocean_token", "dop_v1_" + fake(64, HEX), "DIGITALOCEAN_TOKEN")
    token(
        "Cloudflare Origin CA key",
        "cloudflare_ca_key",
        f"v1.0-{fake(24, HEX)}-{fake(146, HEX)}",
        "CF_ORIGIN_CA_KEY",
    )
    token("Fly.io token", "flyio_token", "fo1_" + fake(43, TOKEN), "FLY_API_TOKEN")
    token("Heroku API key (v2)", "heroku_key", "HRKU-AA" + fake(58, TOKEN), "HEROKU_API_KEY")
    token("Scalingo API token", "scalingo_token", "tk-us-" + fake(48, TOKEN), "SCALINGO_API_TOKEN")
    token("OpenShift user token", "openshift_token", "sha256~" + fake(43, TOKEN), "OPENSHIFT_TOKEN")
    token("Terraform Cloud token", "terraform_token", f"{fake(14)}.atlasv1.{fake(67, TOKEN)}", "TFE_TOKEN")
    token("Pulumi access token", "pulumi_token", "pul-" + fake(40, HEX), "PULUMI_ACCESS_TOKEN")
    token("Vault service token", "vault_token", "hvs." + fake(95, TOKEN), "VAULT_TOKEN")
    token("Doppler service token", "doppler_token", "dp.st." + fake(43), "DOPPLER_TOKEN")
    token("PlanetScale token", "planetscale_token", "pscale_tkn_" + fake(43, TOKEN), "PLANETSCALE_TOKEN")
    token("Databricks token", "databricks_token", "dapi" + fake(32, HEX), "DATABRICKS_TOKEN")
    token("Infracost API key", "infracost_token", "ico-" + fake(32), "INFRACOST_API_KEY")
    token(
        "1Password service account token",
        "onepassword_token",
        "ops_eyJ" + fake(300, B64),
        "OP_SERVICE_ACCOUNT_TOKEN",
    )
    token(
        "Harness PAT",
        "harness_token",
        f"pat.{fake(22, TOKEN)}.{fake(24)}.{fake(20)}",
        "HARNESS_API_KEY",
    )
    token("Octopus Deploy API key", "octopus_key", "API-" + fake(26, UPPER_ALNUM), "OCTOPUS_API_KEY")
    # Messaging, monitoring and SaaS.
    token(
        "Slack bot token", "slack_token", f"xoxb-{digits(13)}-{digits(13, 1)}-{fake(24)}", "SLACK_BOT_TOKEN"
    )
    token(
        "Slack app token",
        "slack_token",
        f"xapp-1-A{fake(10, UPPER_ALNUM)}-{digits(13)}-{fake(64, HEX)}",
        "SLACK_APP_TOKEN",
    )
    token(
        "Telegram bot token", "telegram_bot_token", f"{digits(10)}:AA{fake(33, TOKEN)}", "TELEGRAM_BOT_TOKEN"
    )
    token("SendGrid API key", "sendgrid_key", f"SG.{fake(22, TOKEN)}.{fake(43, TOKEN)}", "SENDGRID_API_KEY")
    token(
        "Brevo (Sendinblue) API key", "sendinblue_key", f"xkeysib-{fake(64, HEX)}-{fake(16)}", "BREVO_API_KEY"
    )
    token("Mailgun API key (legacy)", "mailgun_key", "key-" + fake(32, HEX), "MAILGUN_API_KEY")
    token("Mailchimp API key", "mailchimp_key", fake(32, HEX, seed=3) + "-us14", "MAILCHIMP_API_KEY")
    token("Twilio API key SID", "twilio_key", "SK" + fake(32, HEX), "TWILIO_API_KEY")
    token("Sentry user token", "sentry_token", "sntryu_" + fake(64, HEX), "SENTRY_AUTH_TOKEN")
    token(
        "Dynatrace API token",
        "dynatrace_token",
        f"dt0c01.{fake(24, UPPER_ALNUM)}.{fake(64, UPPER_ALNUM)}",
        "DT_API_TOKEN",
    )
    token("New Relic user API key", "newrelic_key", "NRAK-" + fake(27, UPPER_ALNUM), "NEW_RELIC_API_KEY")
    token(
        "Grafana service account token", "grafana_token", f"glsa_{fake(32)}_{fake(8, HEX)}", "GRAFANA_TOKEN"
    )
    token("Atlassian API token", "atlassian_token", "ATATT3" + fake(186, TOKEN + "="), "JIRA_API_TOKEN")
    token("Linear API key", "linear_key", "lin_api_" + fake(40), "LINEAR_API_KEY")
    token("Notion integration token", "notion_token", "ntn_" + digits(11) + fake(35), "NOTION_TOKEN")
    token("Shopify access token", "shopify_token", "shpat_" + fake(32, HEX), "SHOPIFY_ACCESS_TOKEN")
    token("Typeform PAT", "typeform_token", "tfp_" + fake(59, TOKEN), "TYPEFORM_TOKEN")
    token("Frame.io token", "frameio_token", "fio-u-" + fake(64, TOKEN), "FRAMEIO_TOKEN")
    token("MaxMind license key", "maxmind_key", f"{fake(6)}_{fake(29)}_mmk", "MAXMIND_LICENSE_KEY")
    token("Adobe client secret", "adobe_client_secret", "p8e-" + fake(32), "ADOBE_CLIENT_SECRET")
    token(
        "Mapbox secret token",
        "mapbox_token",
        f"sk.eyJ{fake(60, TOKEN)}.{fake(22, TOKEN)}",
        "MAPBOX_SECRET_TOKEN",
    )
    # Payments and commerce.
    token("Stripe secret key", "stripe_key", "sk_live_" + fake(24), "STRIPE_SECRET_KEY")
    token("Stripe webhook secret", "stripe_key", "whsec_" + fake(32), "STRIPE_WEBHOOK_SECRET")
    token("Square application secret", "square_token", "sq0csp-" + fake(43, TOKEN), "SQUARE_APP_SECRET")
    token("Facebook page token", "facebook_token", "EAAC" + fake(120), "FB_PAGE_TOKEN")
    token(
        "Flutterwave secret key",
        "flutterwave_key",
        "FLWSECK_TEST-" + fake(32, "abcdefgh0123456789") + "-X",
        "FLW_SECRET_KEY",
    )
    token("Shippo API token", "shippo_token", "shippo_live_" + fake(40, HEX), "SHIPPO_API_TOKEN")
    token("EasyPost API key", "easypost_key", "EZAK" + fake(54), "EASYPOST_API_KEY")
    token("Duffel API token", "duffel_token", "duffel_live_" + fake(43, TOKEN), "DUFFEL_ACCESS_TOKEN")
    # AI services.
    token("OpenAI project key", "openai_key", "sk-proj-" + fake(120, TOKEN), "OPENAI_API_KEY")
    token("Anthropic API key", "anthropic_key", "sk-ant-api03-" + fake(93, TOKEN) + "AA", "ANTHROPIC_API_KEY")
    token("Hugging Face token", "huggingface_token", "hf_" + fake(34), "HF_TOKEN")
    token("Perplexity API key", "perplexity_key", "pplx-" + fake(48), "PPLX_API_KEY")
    token("Groq API key", "groq_key", "gsk_" + fake(52), "GROQ_API_KEY")
    token("xAI API key", "xai_key", "xai-" + fake(80), "XAI_API_KEY")
    token("Replicate API token", "replicate_token", "r8_" + fake(37), "REPLICATE_API_TOKEN")
    token(
        "LangSmith API key", "langsmith_key", f"lsv2_pt_{fake(32, HEX)}_{fake(10, HEX)}", "LANGSMITH_API_KEY"
    )
    token("Prefect API key", "prefect_key", "pnu_" + fake(36), "PREFECT_API_KEY")
    # Keys and signed tokens.
    token("age secret key", "age_secret_key", "AGE-SECRET-KEY-1" + fake(58, BECH32), "SOPS_AGE_KEY")
    token("JSON Web Token", "jwt", jwt(), "SESSION_JWT")
    rsa = pem()
    token(
        "RSA private key",
        "private_key",
        rsa,
        "TLS_KEY",
        style="block",
        secret="\n".join(rsa.splitlines()[1:-1]),
    )
    openssh = pem("OPENSSH ", seed=1)
    token(
        "OpenSSH private key",
        "private_key",
        openssh,
        "DEPLOY_KEY",
        style="block",
        secret="\n".join(openssh.splitlines()[1:-1]),
    )
    # Known by the name beside them (gitleaks' keyword families): a provider's name, then the shape.
    keyed = [
        ("Algolia admin key", "algolia_key", fake(32, LOWER_ALNUM), "ALGOLIA_ADMIN_KEY"),
        ("Datadog API key", "datadog_key", fake(32, HEX, seed=4), "DD_API_KEY"),
        ("Heroku API key (UUID)", "heroku_key", fake_uuid(1), "HEROKU_API_KEY"),
        ("Cloudflare API token", "cloudflare_key", fake(40, TOKEN), "CLOUDFLARE_API_TOKEN"),
        ("Twitter bearer token", "twitter_token", "A" * 22 + fake(90), "TWITTER_BEARER_TOKEN"),
        ("Okta API token", "okta_token", "00" + fake(40, TOKEN), "OKTA_API_TOKEN"),
        ("LaunchDarkly SDK key", "launchdarkly_token", "sdk-" + fake_uuid(2), "LAUNCHDARKLY_SDK_KEY"),
        (
            "Mailgun API key",
            "mailgun_key",
            f"{fake(32, HEX, seed=5)}-{fake(8, HEX)}-{fake(8, HEX, seed=1)}",
            "MAILGUN_API_KEY",
        ),
        ("Linear client secret", "linear_key", fake(32, HEX, seed=6), "LINEAR_CLIENT_SECRET"),
        ("Sentry auth token (old)", "sentry_token", fake(64, HEX, seed=7), "SENTRY_AUTH_TOKEN"),
        ("Netlify token", "netlify_token", fake(43, TOKEN, seed=1), "NETLIFY_AUTH_TOKEN"),
        ("HubSpot API key", "hubspot_key", fake_uuid(3), "HUBSPOT_API_KEY"),
        ("Snyk token", "snyk_token", fake_uuid(4), "SNYK_TOKEN"),
        ("Travis CI token", "travis_token", fake(22, LOWER_ALNUM), "TRAVIS_API_TOKEN"),
        ("Zendesk API token", "zendesk_token", fake(40, seed=1), "ZENDESK_API_TOKEN"),
        ("Cohere API key", "cohere_key", fake(40, seed=2), "COHERE_API_KEY"),
        ("Dropbox access token", "dropbox_token", "sl." + fake(135, TOKEN), "DROPBOX_ACCESS_TOKEN"),
        ("Confluent API secret", "confluent_key", fake(64, seed=1), "CONFLUENT_API_SECRET"),
        ("Codecov token", "codecov_token", fake_uuid(5), "CODECOV_TOKEN"),
        ("Facebook app secret", "facebook_token", fake(32, HEX, seed=8), "FACEBOOK_APP_SECRET"),
        ("Plaid secret", "plaid_key", fake(30, LOWER_ALNUM), "PLAID_SECRET"),
        ("Twitch client secret", "twitch_token", fake(30, LOWER_ALNUM, seed=1), "TWITCH_CLIENT_SECRET"),
        ("Discord bot token", "discord_token", discord_bot_token(), "DISCORD_BOT_TOKEN"),
        ("Adafruit IO key", "adafruit_key", fake(32, TOKEN, seed=3), "ADAFRUIT_IO_KEY"),
        ("Airtable PAT", "airtable_key", f"pat{fake(14)}.{fake(64, HEX)}", "AIRTABLE_TOKEN"),
        ("Asana PAT", "asana_token", f"2/{digits(16)}:{fake(32, HEX)}", "ASANA_ACCESS_TOKEN"),
        ("Beamer API key", "beamer_token", "b_" + fake(44, TOKEN), "BEAMER_API_KEY"),
        ("Bittrex API secret", "bittrex_key", fake(32, LOWER_ALNUM, seed=1), "BITTREX_API_SECRET"),
        ("Coinbase API secret", "coinbase_token", fake(64, TOKEN, seed=1), "COINBASE_API_SECRET"),
        ("Contentful delivery token", "contentful_token", fake(43, TOKEN, seed=2), "CONTENTFUL_ACCESS_TOKEN"),
        ("Etsy API key", "etsy_token", fake(24, LOWER_ALNUM), "ETSY_API_KEY"),
        ("Fastly API token", "fastly_token", fake(32, TOKEN, seed=4), "FASTLY_API_TOKEN"),
        ("Finnhub API key", "finnhub_token", fake(20, LOWER_ALNUM), "FINNHUB_API_KEY"),
        ("Flickr API secret", "flickr_token", fake(32, LOWER_ALNUM, seed=2), "FLICKR_API_SECRET"),
        ("FreshBooks token", "freshbooks_token", fake(64, LOWER_ALNUM), "FRESHBOOKS_TOKEN"),
        ("Gitter token", "gitter_token", fake(40, TOKEN, seed=2), "GITTER_TOKEN"),
        ("GoCardless live token", "gocardless_token", "live_" + fake(40, TOKEN), "GOCARDLESS_ACCESS_TOKEN"),
        ("Intercom access token", "intercom_token", fake(60, TOKEN), "INTERCOM_ACCESS_TOKEN"),
        ("JFrog identity token", "jfrog_key", fake(64, LOWER_ALNUM, seed=1), "JFROG_ACCESS_TOKEN"),
        ("Kraken private key", "kraken_key", fake(88, B64), "KRAKEN_PRIVATE_KEY"),
        ("KuCoin API secret", "kucoin_key", fake_uuid(10), "KUCOIN_API_SECRET"),
        ("Mattermost token", "mattermost_token", fake(26, LOWER_ALNUM), "MATTERMOST_TOKEN"),
        ("MessageBird API key", "messagebird_key", fake(25, LOWER_ALNUM), "MESSAGEBIRD_API_KEY"),
        ("NYTimes API key", "nytimes_token", fake(32, TOKEN, seed=5), "NYTIMES_API_KEY"),
        ("RapidAPI key", "rapidapi_key", fake(50, TOKEN), "RAPIDAPI_KEY"),
        ("Sendbird API token", "sendbird_token", fake(40, HEX), "SENDBIRD_API_TOKEN"),
        ("Squarespace API key", "squarespace_token", fake_uuid(11), "SQUARESPACE_API_KEY"),
        ("Sumo Logic access key", "sumologic_key", fake(64, seed=3), "SUMO_ACCESS_KEY"),
        ("Yandex API key", "yandex_key", "AQVN" + fake(36, TOKEN), "YANDEX_API_KEY"),
    ]
    for fmt, kind, value, name in keyed:
        extra = (("discord.js", 'client.login("{value}");\n'),) if kind == "discord_token" else ()
        token(fmt, kind, value, name, style="keyed", extra=extra)
    # Generic credentials: a key says what the value is.
    for fmt, value, name, said in [
        ("database password", password(1), "DB_PASSWORD", "database password"),
        ("API key without a provider", fake(32, seed=9), "PAYMENTS_API_KEY", "payments API key"),
        (
            "Django secret key",
            "django-insecure-" + fake(40, ALNUM + "!@#%^&*-_=+"),
            "SECRET_KEY",
            "secret key",
        ),
    ]:
        token(fmt, "password", value, name, style="keyed", said=said)
    # URLs and connection strings.
    pw = password(2)
    for fmt, kind, value, secret, name in [
        ("PostgreSQL URL", "password", f"postgres://app:{pw}@db.internal:5432/app", pw, "DATABASE_URL"),
        (
            "MongoDB SRV URL",
            "password",
            f"mongodb+srv://svc:{password(3)}@cluster0.ab1cd.mongodb.net/db",
            password(3),
            "MONGO_URL",
        ),
        ("Redis URL", "password", f"redis://:{password(4)}@cache:6379/0", password(4), "REDIS_URL"),
        (
            "basic-auth URL with '#' in the password",
            "password",
            f"https://deploy:pa#{fake(9)}@git.internal/acme/app.git",
            f"pa#{fake(9)}",
            "REPO_URL",
        ),
        (
            "JDBC ?password= parameter",
            "password",
            f"jdbc:postgresql://db:5432/app?user=app&password={password(5)}",
            password(5),
            "JDBC_URL",
        ),
        (
            "JDBC SQL Server ;password=",
            "password",
            f"jdbc:sqlserver://db:1433;databaseName=app;user=sa;password={password(6)};",
            password(6),
            "JDBC_URL",
        ),
        (
            "Sentry DSN",
            "sentry_dsn",
            f"https://{fake(32, HEX, seed=10)}@o{digits(6)}.ingest.sentry.io/{digits(7)}",
            fake(32, HEX, seed=10),
            "SENTRY_DSN",
        ),
        (
            "Slack webhook",
            "slack_webhook",
            f"https://hooks.slack.com/services/T{fake(8, UPPER_ALNUM)}/B{fake(10, UPPER_ALNUM)}/{fake(24)}",
            f"T{fake(8, UPPER_ALNUM)}/B{fake(10, UPPER_ALNUM)}/{fake(24)}",
            "SLACK_WEBHOOK_URL",
        ),
        (
            "Discord webhook",
            "discord_webhook",
            f"https://discord.com/api/webhooks/{digits(18, 2)}/{fake(68, TOKEN)}",
            f"{digits(18, 2)}/{fake(68, TOKEN)}",
            "DISCORD_WEBHOOK_URL",
        ),
        (
            "Microsoft Teams webhook",
            "teams_webhook",
            f"https://acme.webhook.office.com/webhookb2/{fake_uuid(6)}@{fake_uuid(7)}/IncomingWebhook/"
            f"{fake(32, HEX)}/{fake_uuid(8)}",
            f"{fake_uuid(6)}@{fake_uuid(7)}/IncomingWebhook/{fake(32, HEX)}/{fake_uuid(8)}",
            "TEAMS_WEBHOOK_URL",
        ),
        (
            "Azure SAS token",
            "azure_sas_token",
            f"https://acme.blob.core.windows.net/c/x.csv?sv=2022-11-02&sr=b&sp=r&sig={fake(43)}%3D",
            f"{fake(43)}%3D",
            "BLOB_SAS_URL",
        ),
        (
            "Azure storage connection string",
            "azure_storage_key",
            f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={fake(86, B64)}=="
            ";EndpointSuffix=core.windows.net",
            f"{fake(86, B64)}==",
            "AZURE_STORAGE_CONNECTION_STRING",
        ),
    ]:
        token(fmt, kind, value, name, style="url", secret=secret)
    # Commands.
    pw = password(7)
    token(
        "curl -u user:password",
        "password",
        f"curl -u admin:{pw} https://ci.internal/api/json",
        "CURL",
        style="command",
        secret=pw,
    )
    token(
        "CLI --password option",
        "password",
        f"mlflow-client login --username ci --password {password(8)}",
        "CLI",
        style="command",
        secret=password(8),
    )
    # Files with their own shape.
    legacy = fake_uuid(9)
    token(
        "npm legacy UUID _authToken",
        "npm_token",
        legacy,
        "NPMRC",
        style="file",
        extra=(
            (".npmrc", "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={value}\n"),
            ("Dockerfile", 'FROM node:22\nRUN echo "//registry.npmjs.org/:_authToken={value}" > ~/.npmrc\n'),
            (
                "diff",
                "--- a/.npmrc\n+++ b/.npmrc\n@@ -1 +1,2 @@\n registry=https://registry.npmjs.org/\n"
                "+//registry.npmjs.org/:_authToken={value}\n",
            ),
        ),
    )
    auth = base64.b64encode(f"ci-bot:{password(9)}".encode()).decode()
    token(
        "Docker registry auth",
        "docker_auth",
        auth,
        "DOCKER_CONFIG",
        style="file",
        extra=(
            ("config.json", json.dumps({"auths": {"ghcr.io": {"auth": "{value}"}}}, indent=2)),
            (
                "diff",
                "--- a/.docker/config.json\n+++ b/.docker/config.json\n@@ -1 +1 @@\n"
                '-{"auths": {}}\n+{"auths": {"ghcr.io": {"auth": "{value}"}}}\n',
            ),
        ),
    )
    key_id = fake(40, HEX, seed=11)
    token(
        "GCP service account key",
        "gcp_service_account",
        key_id,
        "GCP_KEY",
        style="file",
        extra=(
            (
                "service-account.json",
                json.dumps(
                    {
                        "type": "service_account",
                        "project_id": "acme",
                        "private_key_id": "{value}",
                        "client_email": "ci@acme.iam.gserviceaccount.com",
                    },
                    indent=2,
                ),
            ),
        ),
    )
    return s


SAMPLES: list[Sample] = _samples()


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _notebook(*lines: str) -> str:
    cell = {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [], "source": list(lines)}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1)


def _k8s(section: str, body: str) -> str:
    return (
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-credentials\n  namespace: prod\n"
        f"type: Opaque\n{section}:\n{body}"
    )


def _diff(path: str, removed: str, added: str) -> str:
    return (
        f"commit {fake(40, HEX, seed=path)}\nAuthor: Dev <dev@acme.test>\n\n    Configure the service\n\n"
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1,3 +1,3 @@\n import os\n"
        f"-{removed}\n+{added}\n DEBUG = False\n"
    )


Placement = tuple[str, str, tuple[str, ...]]
"""(place, text, strings that must not survive)."""


def placements(sample: Sample) -> Iterator[Placement]:
    """The sample in every place that suits its style."""
    v, name, hidden = sample.value, sample.name, (sample.hidden,)
    key = name.lower()
    if sample.style in ("token", "keyed", "url"):
        yield "source", f'import os\n\n{name} = "{v}"\n', hidden
        yield ".env", f"DEBUG=false\n{name}={v}\nPORT=8080\n", hidden
        yield "yaml", f"service:\n  port: 8080\n  {key}: {v}\n  replicas: 2\n", hidden
        yield "json", json.dumps({"name": "api", "env": f"DEBUG=false\n{name}={v}\nPORT=8080"}), hidden
        yield "notebook", _notebook("import os\n", f'{name} = "{v}"\n', "client = connect()\n"), hidden
        yield "Dockerfile", f"FROM python:3.12-slim\nENV {name}={v}\nRUN pip install app\n", hidden
        yield "k8s stringData", _k8s("stringData", f'  {name}: "{v}"\n  LOG_LEVEL: info\n'), hidden
        yield "k8s data", _k8s("data", f"  {name}: {_b64(v)}\n"), (*hidden, _b64(v))
        yield "diff", _diff("settings.py", f'{name} = os.environ["{name}"]', f'{name} = "{v}"'), hidden
    if sample.style == "token":
        # In pieces, as code writes a token to get past a push-protection scanner.
        head, tail = v[: len(v) // 2], v[len(v) // 2 :]
        yield "source, split literal", f'{name} = (\n    "{head}"\n    "{tail}"\n)\n', (head, tail)
        yield "JavaScript, joined with +", f'const {key} = "{head}" +\n  "{tail}";\n', (head, tail)
        yield (
            "README",
            f"Try it:\n\n```sh\ncurl -H 'X-Api-Key: {v}' https://api.acme.dev/v1/items\n```\n",
            hidden,
        )
        yield "commit message", f"Rotate the CI credentials\n\nThe leaked value {v} is revoked now.\n", hidden
    elif sample.style == "keyed":
        yield "README", f"Set it before running:\n\n```sh\nexport {name}={v}\n```\n", hidden
        yield "commit message", f"Add the staging settings\n\n{name}={v}\n", hidden
    elif sample.style == "url":
        yield "README", f"The service reads from [the store]({v}) by default.\n", hidden
        yield "commit message", f"Point the service at the new store\n\nIt now uses {v} instead.\n", hidden
    elif sample.style == "block":
        escaped = v.replace("\n", "\\n")
        indented = "\n".join("    " + line for line in v.splitlines())
        yield "source", f'{name} = """\n{v}\n"""\n', hidden
        yield "json", json.dumps({"type": "service_account", "private_key": v + "\n"}), hidden
        yield "notebook", _notebook(*(line + "\n" for line in f'{name} = """\n{v}\n"""'.splitlines())), hidden
        yield ".env", f'{name}="{escaped}"\n', hidden
        yield "k8s stringData", _k8s("stringData", f"  tls.key: |\n{indented}\n  tls.crt: x\n"), hidden
        yield "k8s data", _k8s("data", f"  tls.key: {_b64(v)}\n"), (*hidden, _b64(v))
        yield "README", f"Paste the key:\n\n```\n{v}\n```\n", hidden
        yield "commit message", f"Add the deploy key\n\n{v}\n", hidden
        added = "\n".join("+" + line for line in v.splitlines())
        yield (
            "diff",
            "diff --git a/id_rsa b/id_rsa\nnew file mode 100600\n--- /dev/null\n+++ b/id_rsa\n"
            f"@@ -0,0 +1,9 @@\n{added}\n",
            hidden,
        )
    elif sample.style == "command":
        multiline = v.replace(" https://", " \\\n  https://").replace(" -", " \\\n  -", 1)
        yield "shell script", f"#!/bin/sh\nset -eu\n{v}\n", hidden
        yield "shell script, continued lines", f"#!/bin/sh\n{multiline}\n", hidden
        yield "Dockerfile", f"FROM alpine:3.20\nRUN {v}\n", hidden
        yield "notebook", _notebook(f"!{v}\n"), hidden
        yield "README", f"Check access:\n\n```sh\n{v}\n```\n", hidden
        yield "commit message", f"Document the health check\n\nRun `{v}` to try it.\n", hidden
        yield "diff", _diff("scripts/check.sh", "echo skipped", v), hidden
    if sample.said:
        # As people state a credential in an issue thread, on a wiki page or in a commit message.
        said = sample.said
        yield "issue comment", f"Staging is down again. The {said} is {v}, can someone check?\n", hidden
        yield (
            "wiki page",
            f"h2. Staging access\n\nTo log in, use the {said} `{v}` and the user admin.\n",
            hidden,
        )
        yield (
            "commit message, prose",
            f"Rotate the staging credentials\n\nThe {said} for staging is now {v}.\n",
            hidden,
        )
    for place, template in sample.extra:
        yield place, template.replace("{value}", v), hidden


@dataclass(frozen=True)
class Miss:
    sample: Sample
    place: str
    text: str
    redacted: str


@dataclass(frozen=True)
class Coverage:
    placements: int
    misses: list[Miss]
    kinds: frozenset[str]
    formats: int

    @property
    def share(self) -> float:
        return 1 - len(self.misses) / self.placements


def survives(hidden: str, redacted: str) -> bool:
    """Does any part of ``hidden`` remain: a run of 12 of its characters, or all of a shorter one?"""
    if len(hidden) <= 12:
        return hidden in redacted
    return any(hidden[i : i + 12] in redacted for i in range(len(hidden) - 11))


def measure(samples: list[Sample] = SAMPLES, redactor: Callable[[str], str] | None = None) -> Coverage:
    redactor = redactor or (lambda text: redact(text)[0])
    misses: list[Miss] = []
    count = 0
    for sample in samples:
        for place, text, hidden in placements(sample):
            count += 1
            out = redactor(text)
            if any(survives(h, out) for h in hidden):
                misses.append(Miss(sample, place, text, out))
    return Coverage(count, misses, frozenset(s.kind for s in samples), len(samples))


def main() -> None:
    coverage = measure()
    print(
        f"{coverage.formats} formats of {len(coverage.kinds)} kinds in {coverage.placements} placements: "
        f"{coverage.share:.1%} redacted, {len(coverage.misses)} missed"
    )
    for miss in coverage.misses:
        print(f"  missed: {miss.sample.format} in {miss.place}")


if __name__ == "__main__":
    main()
