"""Secret and PII redaction: one case per kind, the non-secrets that must survive, and the guarantees
(one placeholder per key block, counts, idempotence, linear time).

Fake secrets are generated or concatenated here so that this file never holds a string that a secret
scanner (or `redact` itself) would flag as a live credential.
"""

from __future__ import annotations

import base64
import random
import string
import time
from collections import Counter

import pytest
from tests.secret_corpus import SAMPLES, discord_bot_token, fake_uuid

from repotune.clean.secrets import PII_RULES, RULES, redact

ALNUM = string.ascii_letters + string.digits
TOKEN = ALNUM + "-_"
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"


def fake(n: int, alphabet: str = ALNUM, seed: int = 0) -> str:
    """A random-looking string, the same on every run."""
    rng = random.Random(f"{seed}:{n}:{alphabet}")
    return "".join(rng.choice(alphabet) for _ in range(n))


def digits(n: int, seed: int = 0) -> str:
    return fake(n, string.digits, seed)


RSA_KEY = (
    "-----BEGIN RSA " + "PRIVATE KEY-----\n"
    + "\n".join(fake(64, B64, seed=i) for i in range(6))
    + "\n" + fake(24, B64) + "==\n"
    + "-----END RSA " + "PRIVATE KEY-----"
)  # fmt: skip

# (kind, text with `§` where the secret goes, secret)
CASES: list[tuple[str, str, str]] = [
    ("aws_access_key", 'aws_access_key_id = "§"', "AKIA" + fake(16, string.ascii_uppercase + "234567", 7)),
    ("aws_access_key", "credentials: {AccessKeyId: §}", "ASIA" + fake(16, string.ascii_uppercase + "234567")),
    ("aws_secret_key", "aws_secret_access_key = §", fake(40, B64, 7)),
    ("aws_secret_key", '{"SecretAccessKey": "§"}', fake(40, B64)),
    ("gcp_api_key", 'const mapsKey = "§";', "AIza" + fake(35, TOKEN)),
    ("gcp_service_account", '{"type": "service_account", "private_key_id": "§"}', fake(40, HEX)),
    (
        "azure_storage_key",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=§;EndpointSuffix=core.windows.net",
        fake(86, B64) + "==",
    ),
    ("azure_client_secret", "AZURE_CLIENT_SECRET=§", fake(3) + "8Q~" + fake(34, ALNUM + "_.-")),
    ("azure_client_secret", 'azure_client_secret = "§"', fake(32, TOKEN, seed=1)),
    ("github_token", "export GITHUB_TOKEN=§", "ghp_" + fake(36)),
    ("github_token", "gh auth login --with-token <<< §", "github_pat_" + fake(22) + "_" + fake(59)),
    ("gitlab_token", "git clone https://oauth2:§@gitlab.com/acme/app.git", "glpat-" + fake(20, TOKEN)),
    ("slack_token", "SLACK_BOT_TOKEN: §", "xoxb-" + digits(13) + "-" + digits(13, 1) + "-" + fake(24)),
    (
        "slack_webhook",
        'webhook = "https://hooks.slack.com/services/§"',
        "T" + fake(8, string.ascii_uppercase) + "/B" + fake(10, string.ascii_uppercase) + "/" + fake(24),
    ),
    ("stripe_key", 'stripe.api_key = "§"', "sk_live_" + fake(24)),
    ("stripe_key", "STRIPE_SECRET_KEY=§", "sk_test_" + fake(99)),
    ("openai_key", 'client = OpenAI(api_key="§")', "sk-proj-" + fake(120, TOKEN)),
    ("openai_key", "OPENAI_API_KEY=§", "sk-" + fake(48)),
    ("anthropic_key", "ANTHROPIC_API_KEY=§", "sk-ant-api03-" + fake(93, TOKEN) + "AA"),
    ("huggingface_token", "huggingface-cli login --token §", "hf_" + fake(34)),
    ("npm_token", "//registry.npmjs.org/:_authToken=§", "npm_" + fake(36)),
    ("sendgrid_key", "sg = SendGridAPIClient('§')", "SG." + fake(22, TOKEN) + "." + fake(43, TOKEN)),
    ("twilio_key", "api_key_sid = '§'", "SK" + fake(32, HEX)),
    ("twilio_key", 'TWILIO_AUTH_TOKEN = "§"', fake(32, HEX)),
    ("private_key", "KEY = '''§'''\n", RSA_KEY),
    (
        "jwt",
        'curl -H "Authorization: Bearer §" https://api.internal/v1/me',
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
        + fake(43, TOKEN),
    ),
    ("password", 'DATABASE_URL = "postgres://app:§@db.internal:5432/app"', "S3cr3t-Pa55"),
    ("password", "redis://:§@cache:6379/0", "r3dis!pw"),
    ("password", 'db.connect(host="db", password="§")', "hunter2!x"),
    ("password", "const config = { password: '§' };", "Tr0ub4dor&3"),
    ("password", "  password: §\n", "k8s-Pa55w0rd"),
    ("password", "  password: §\n", "hunter22"),
    ("password", "DB_PASSWORD=§\n", "Sup3rS3cret"),
    ("password", "export DB_PASSWORD=§\n", "supersecret"),
    ("password", 'ADMIN_PASSWORD = "§"', "letmeinplease"),
    ("password", "POSTGRES_PASSWORD: §\n", "postgres"[::-1] + "42"),
    ("password", '{"username": "admin", "password": "§"}', "pa55-W0rd!"),
    ("password", '[database]\npassword = "§"\n', "toml-S3cret"),
    ("password", "[database]\npasswd = §\n", "x9!fQ2#zL"),
    ("password", "Server=tcp:db;User ID=sa;Password=§;", "MyP4ssw0rd!"),
    ("password", "https://api.acme.io/v1/items?api_key=§&page=2", fake(24)),
    ("password", "<password>§</password>", "n3xus-Deploy"),
    ("password", 'requests.get(url, auth=("deploy", "§"))', "hunter2!x"),
    ("password", 'session.auth = HTTPBasicAuth("deploy", "§")', "Tr0ub4dor&3"),
    ("password", 'server.login("alerts@acme.io", "§")', "abcdwxyzefghstuv"),
    ("password", 'SECRET_KEY = "§"', "django-insecure-" + fake(40, ALNUM + "!@#%^&*(-_=+)")),
    ("password", "password: str = '§'", "s3cr3tP4ss"),
    ("password", 'headers = {"Authorization": "Bearer §"}', fake(40)),
    ("password", 'access_token = "§"', fake(40)),
    ("high_entropy", 'ENCRYPTION_KEY_B64 = "§"', fake(44, B64)),
    ("high_entropy", "session_key_hex = '§'", fake(64, HEX)),
    # Survivors of `ingest` + `clean` before the rule tables grew (issue 11), as they were written.
    ("discord_token", 'client.login("§");', discord_bot_token()),
    ("password", "git clone https://deploy:§@git.internal/acme/app.git", "pa#" + fake(10)),
    ("npm_token", "//registry.npmjs.org/:_authToken=§\n", fake_uuid()),
    ("password", "curl -u admin:§ https://ci.internal/api/json", "s3cr3t"),
    ("sentry_dsn", 'sentry_sdk.init(dsn="https://§@o123456.ingest.sentry.io/4504")', fake(32, HEX)),
    ("password", 'url = "jdbc:postgresql://db:5432/app?user=app&password=§"', "Pg-" + fake(10)),
    # Families that had no rule.
    ("pypi_token", "password = §", "pypi-AgEIcHlwaS5vcmc" + fake(80, TOKEN)),
    ("dockerhub_token", "echo § | docker login -u ci --password-stdin", "dckr_pat_" + fake(27, TOKEN)),
    ("vault_token", "export VAULT_TOKEN=§", "hvs." + fake(95, TOKEN)),
    ("databricks_token", 'host, token = "https://adb.azuredatabricks.net", "§"', "dapi" + fake(32, HEX)),
    (
        "discord_webhook",
        'requests.post("https://discord.com/api/webhooks/§", json=msg)',
        "112233445566778899/" + fake(68, TOKEN),
    ),
    ("mailgun_key", 'auth=("api", "§")', "key-" + fake(32, HEX)),
    ("shopify_token", "X-Shopify-Access-Token: §", "shpat_" + fake(32, HEX)),
    ("linear_key", 'LinearClient(apiKey: "§")', "lin_api_" + fake(40)),
    (
        "age_secret_key",
        "# secret key\n§\n",
        "AGE-SECRET-KEY-1" + fake(58, "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"),
    ),
    ("kubernetes_secret", "kind: Secret\ndata:\n  token: §\n", "Z2hwX2V4YW1wbGU" + fake(20, B64)),
    ("docker_auth", '{"auths": {"ghcr.io": {"auth": "§"}}}', "Y2ktYm90OlMzY3IzdC1wdw=="),
    ("password", "mysqldump --user=backup --password=§ app", "Bk-" + fake(12)),
]


@pytest.mark.parametrize(
    ("kind", "template", "secret"), CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)]
)
def test_each_kind_becomes_its_placeholder_and_the_rest_is_kept(
    kind: str, template: str, secret: str
) -> None:
    text, counts = redact(template.replace("§", secret))
    assert text == template.replace("§", f"<SECRET:{kind}>")
    assert secret not in text
    assert counts == Counter({kind: 1})


def test_every_kind_has_a_case() -> None:
    """Here or in the corpus (tests/secret_corpus.py), where each kind is planted in many places."""
    assert {rule.kind for rule in RULES} <= {kind for kind, _, _ in CASES} | {s.kind for s in SAMPLES}


NOT_SECRETS = [
    'password = os.environ["DB_PASSWORD"]',
    "password = os.getenv('DB_PASSWORD', '')",
    "token = get_token()",
    "self.token = token",
    "api_key: str",
    "def connect(host: str, password: str | None = None, api_key: str = '') -> None:",
    "private_key: Ed25519PrivateKey,",
    "private_key: x25519.X25519PrivateKey",
    'password = "${DB_PASSWORD}"',
    "DB_PASSWORD=${DB_PASSWORD}",
    "password: '{{ vault_db_password }}'",
    'password = "<your-password>"',
    'api_key = "YOUR_API_KEY_HERE"',
    'password = "%(password)s"',
    'secret = "{secret}"',
    'token = "***"',
    'password = "xxxxxxxx"',
    'password = ""',
    "password = None",
    'PASSWORD = "changeme"',
    '"password": "Passwort"',
    'secret = "Please enter the secret"',
    'AttributeOID.CHALLENGE_PASSWORD: "challengePassword"',
    "password_field = 'password_confirmation'",
    'password_file = "/run/secrets/db_password"',
    'private_key = "server.key"',
    "token = 'endfor'",
    "if token == 'identifier':",
    'eos_token = "<|endoftext|>"',
    'pad_token = "[PAD]"',
    'tokenizer_name = "bert-base-uncased"',
    'max_tokens = "4096"',
    'key = "Content-Type"',
    'monkey = "banana"',
    'publicKeyToken="1fc8b3b9a1e18e3b"',
    'key_sha256 = "bb1636883c2707b51c5b7fc26c6927af4430f2e0785a8c7bc886337f919f9edf"',
    'request_id = "123e4567-e89b-12d3-a456-426614174000"',
    # UUIDs are identifiers far more often than credentials, even under a key-like name.
    'api_key = "123e4567-e89b-12d3-a456-426614174000"',
    "pip install scikit-learn  # not sk-learn, and not a task-runner-option-flag",
    "postgres://user:password@localhost/db",
    "postgres://{user}:{password}@{host}/db",
    'url = f"https://{user}:{token}@github.com/{repo}"',
    "ssh git@github.com:acme/app.git",
    'if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):',
    "BEGIN = '-----BEGIN PRIVATE KEY-----'\nEND = '-----END PRIVATE KEY-----'",
    "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n-----END OPENSSH PRIVATE KEY-----",
    "Authorization: Bearer YOUR_TOKEN",
    "PASSWORD = get_password",
    f'TWILIO_ACCOUNT_SID = "AC{fake(32, HEX)}"',
    f'STRIPE_PUBLISHABLE_KEY = "pk_live_{fake(24)}"',
    "server.login(user, password)",
    'auth = ("user", os.environ["PW"])',
    # Next to the rules that came from gitleaks' families and the context rules.
    'curl -u "$USER:$PASSWORD" https://ci.internal',
    "curl -u user:password https://example.org",
    "curl -u $TOKEN: https://api.stripe.com/v1/charges",
    "self._password = password",
    "_auth = get_auth()",
    "    _password = self._prompt()",
    'parser.add_argument("--password", help="the database password")',
    "mysql --user=root --password=$MYSQL_PASSWORD",
    "app --password <PASSWORD> --token ${TOKEN}",
    "--password is required when --user is given",
    f'HEROKU_APP_ID = "{fake_uuid(1)}"',
    "self.linear = nn.Linear(512, 512)",
    "key-value store, see the key-binding docs",
    "the API-KEY header, sent as X-API-KEY",
    "import discord\nclient = discord.Client(intents=intents)\nclient.run(os.environ['DISCORD_TOKEN'])",
    "kind: ConfigMap\ndata:\n  LOG_LEVEL: info\n  workers: '4'\n",
    "kind: Secret\nstringData:\n  password: '{{ .Values.db.password }}'\n",
    "kind: Secret\ndata:\n  password: ${DB_PASSWORD_B64}\n",
    '{"auth": "token"}',
    "sentry_sdk.init(dsn=os.environ['SENTRY_DSN'])",
    "jdbc:postgresql://db:5432/app?user=app&password=${DB_PASSWORD}",
    "See https://user@example.org/#section and http://localhost:8080/#/home",
    "ENV PATH /usr/local/bin:$PATH\nENV PASSWORD_FILE /run/secrets/db\n",
    "PASSWORD mismatch: try again",
    "Run `curl -u admin:password https://ci.internal` to try it.",
    "kind: Secret\nstringData:\n  GITHUB_TOKEN: REPLACE_ME\n  MLFLOW_TRACKING_URI: http://mlflow:5000\n",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_leaves_non_secrets_alone(text: str) -> None:
    assert redact(text) == (text, Counter())


PW = fake(12, ALNUM, 41)  # a password a generator picked: letters and digits, upper case first or not
_PEM = "\n".join(
    [
        "-----BEGIN RSA PRIVATE KEY-----",
        fake(64, B64, 42),
        fake(64, B64, 43),
        "-----END RSA PRIVATE KEY-----\n",
    ]
)
PEM_B64 = base64.b64encode(_PEM.encode()).decode()
LEAKS = [
    # (where, text, what must go): configuration files, whose values are literals, found by their path
    ("config/database.yml", f"production:\n  adapter: postgresql\n  password: {PW.capitalize()}\n", PW),
    ("src/main/resources/application.properties", f"spring.datasource.password={PW}\n", PW),
    ("gradle.properties", f"ossrhPassword={PW}\nsigning.password={PW}x\n", PW),
    ("setup.cfg", "[db]\npassword = letmein2024\n", "letmein2024"),
    # a diff names its files, a path with a space too
    (
        None,
        "diff --git a/deploy/prod config.yml b/deploy/prod config.yml\n--- a/deploy/prod config.yml\n"
        f"+++ b/deploy/prod config.yml\n@@ -1 +1 @@\n-password: old\n+password: {PW.capitalize()}\n",
        PW,
    ),
    (".pypirc", "[pypi]\nusername = bot\npassword = hunter2x\n", "hunter2x"),
    ("kustomization.yaml", f"secretGenerator:\n- name: db\n  literals:\n  - password={PW}\n", PW),
    # Kubernetes Secrets as `kubectl get -o yaml` writes them, and the data of one in a diff
    (
        None,
        "apiVersion: v1\nitems:\n- apiVersion: v1\n  data:\n    password: "
        + base64.b64encode(PW.encode()).decode()
        + "\n  kind: Secret\n  metadata:\n    name: db\nkind: List\n",
        base64.b64encode(PW.encode()).decode(),
    ),
    (
        None,
        "diff --git a/s.yaml b/s.yaml\n--- a/s.yaml\n+++ b/s.yaml\n@@ -3,4 +3,4 @@\n"
        " kind: Secret\n data:\n-  KEY: "
        + base64.b64encode(b"old" + PW.encode()).decode()
        + "\n+  KEY: "
        + base64.b64encode(PW.encode()).decode()
        + "\n",
        base64.b64encode(PW.encode()).decode(),
    ),
    # a base64 private key (kubeconfig), and a deleted key whose diff stops before its END line
    (None, f"users:\n- name: admin\n  user:\n    client-key-data: {PEM_B64}\n", PEM_B64[20:60]),
    (
        None,
        "diff --git a/k b/k\n--- a/k\n+++ /dev/null\n@@ -1,9 +0,0 @@\n-----BEGIN RSA PRIVATE KEY-----\n-"
        + fake(64, B64, 44)
        + "\n-"
        + fake(64, B64, 45)
        + "\n[diff truncated]",
        fake(64, B64, 45),
    ),
    # passwords on command lines and in credential files
    (None, f"mysql -u root -p{PW} billing\n", PW),
    (None, f"docker login -u acme -p {PW} registry.example.com\n", PW),
    (None, f"sshpass -p '{PW}' ssh root@host\n", PW),
    (None, f"PGPASSWORD={PW} psql -h db -U app\n", PW),
    (None, f"+PGPASSWORD={PW} psql -h db -U app\n", PW),
    (None, f"sqlcmd -S db -U sa -P {PW} -Q 'select 1'\n", PW),
    (None, f"openssl pkcs12 -export -passout pass:{PW} -out a.p12\n", PW),
    (None, f"keytool -importcert -storepass {PW} -keystore a.jks\n", PW),
    (None, f"htpasswd -b -c .htpasswd admin {PW}\n", PW),
    (None, f"machine api.heroku.com\n  login jane\n  password {PW}\n", PW),
    (None, "admin:$apr1$ZxYq3w2e$" + fake(22, ALNUM, 46) + "\n", fake(22, ALNUM, 46)),
    (None, f'curl -H "X-API-Key: {fake(32, ALNUM, 47)}" https://api.example.com\n', fake(32, ALNUM, 47)),
    (None, f'<property name="password" value="{PW}"/>\n', PW),
    (None, f"define( 'DB_PASSWORD', '{PW}' );\n", PW),
    (None, f"ops: reset db\n\nnew db password: {PW.capitalize()}\n", PW.capitalize()),
    # an AWS key pair by position, the secret on the next line as black writes it
    (
        "app/aws.py",
        'boto3.Session(\n    "AKIA'
        + fake(16, string.ascii_uppercase + "234567", 48)
        + '",\n    "'
        + fake(40, B64, 49)
        + '",\n)\n',
        fake(40, B64, 49),
    ),
    # a table's password column: the file, and the diff that adds it
    ("db/seed/users.csv", f"id,email,password\n1,a@example.org,{PW}\n", PW),
    (
        None,
        "diff --git a/users.tsv b/users.tsv\nnew file mode 100644\n--- /dev/null\n+++ b/users.tsv\n"
        f"@@ -0,0 +1,2 @@\n+login\tapi_key\n+bot\t{fake(32, ALNUM, 50)}\n",
        fake(32, ALNUM, 50),
    ),
]


@pytest.mark.parametrize(("path", "text", "hidden"), LEAKS)
def test_secrets_in_configuration_files_commands_and_diffs_are_redacted(
    path: str | None, text: str, hidden: str
) -> None:
    out, counts = redact(text, path=path)
    assert hidden not in out and counts, out


def test_a_tables_secret_columns_are_redacted_row_by_row_and_its_other_columns_kept() -> None:
    """A ``.csv`` whose header names a password or token column: each row's value there goes (quoted
    fields with the delimiter and doubled quotes inside too), stand-ins and empty cells stay, other
    columns stay, and a word list's ``token`` column is words, not secrets. In a diff, a hunk at the
    file's first line is read on both sides, a context row once."""
    table = (
        "id,user,password,api_token,email\n"
        f'1,alice,{PW},tok_{fake(24, ALNUM, 51)},alice@example.org\n2,bob,"p,w""{PW}",,bob@example.org\n'
        "3,carol,changeme,short,carol@example.org\r\n"
    )
    out, counts = redact(table, path="fixtures/users.csv")
    assert out == (
        "id,user,password,api_token,email\n"
        "1,alice,<SECRET:password>,<SECRET:password>,alice@example.org\n"
        '2,bob,"<SECRET:password>",,bob@example.org\n3,carol,changeme,short,carol@example.org\r\n'
    )
    assert counts == Counter({"password": 3})
    words = "token,pos,lemma\nthe,DET,the\nrunning,VERB,run\n"
    assert redact(words, path="data/tokens.csv") == (words, Counter())
    assert redact(table, path="src/users.py")[0].count("<SECRET:") == 0  # not a table there
    diff = (
        "diff --git a/u.csv b/u.csv\n--- a/u.csv\n+++ b/u.csv\n@@ -1,3 +1,3 @@\n user,password\n"
        f"-alice,{PW}1\n+alice,{PW}2\n bob,{PW}3\n"
        "diff --git a/v.csv b/v.csv\n--- a/v.csv\n+++ b/v.csv\n@@ -8,1 +8,1 @@\n-dave,x1\n+dave,x2\n"
    )
    out, counts = redact(diff)
    assert PW not in out and counts == Counter({"password": 3}), out
    assert out.endswith("-dave,x1\n+dave,x2\n")  # a hunk without the header row: columns unknown
    # ... unless ingest recorded the table's header row for the commit (meta["table_headers"]).
    later = (
        "diff --git a/v.csv b/v.csv\n--- a/v.csv\n+++ b/v.csv\n@@ -8,2 +8,2 @@\n"
        f" carol,{PW}4\n-dave,{PW}5\n+dave,{PW}6\n"
    )
    out, counts = redact(later, table_headers={"v.csv": "user,password"})
    assert PW not in out and counts == Counter({"password": 3}), out
    assert redact(later, table_headers={"w.csv": "user,password"})[0] == later  # another table's header


# What documentation and ordinary code write in a secret's place: kept as written.
EXAMPLES = [
    'aws_access_key_id = "AKIA' + 'IOSFODNN7EXAMPLE"',  # AWS's own documented key pair
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN=ghp_" + "x" * 36,
    'OPENAI_API_KEY="sk-' + "x" * 48 + '"',
    "OPENAI_API_KEY=sk-...",
    "def connect(azure_client_secret: Optional[str] = None): ...",
    "    :param  password: string:",
    "password = get_password\n",  # in code a name is a variable, even where a .yml would hold a literal
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_documented_examples_and_annotations_are_kept(text: str) -> None:
    assert redact(text, path="src/app.py") == (text, Counter())


def test_curl_user_and_password_as_the_issue_wrote_it() -> None:
    # "pass" is a stand-in in an assignment, but on a command line it is the password someone typed.
    assert redact("curl -u admin:pass https://ci.internal/api/json") == (
        "curl -u admin:<SECRET:password> https://ci.internal/api/json",
        Counter({"password": 1}),
    )


# Credentials stated in prose, as issue threads, wiki pages and commit messages state them: (text,
# what must go). Random-looking values are concatenated so that this file holds none whole.
PROSE = [
    ("To log in to staging use the password Tr0ub4dor&3 and user admin.", "Tr0ub4dor&3"),
    ("The admin password is hunter2x9Q, please rotate it.", "hunter2x9Q"),
    ("the secret key is `9aF3kL0pQz7X" + "vB2mN5tR8wY1` \u2014 do not share", "9aF3kL0pQz7XvB2mN5tR8wY1"),
    (
        "Here's my token: 8f14e45fceea167a" + "5a36dedd4bea2543 (works locally)",
        "8f14e45fceea167a5a36dedd4bea2543",
    ),
    ("The password for the staging DB is now Xk4!mQ9z.", "Xk4!mQ9z"),
    ("the DB_PASSWORD is Tr0ub4dor&3", "Tr0ub4dor&3"),
    ("API key: " + fake(24, ALNUM, 60), fake(24, ALNUM, 60)),
    ('the access key was changed to "AbC9dEf2GhI5"', "AbC9dEf2GhI5"),
    ("the password was hunter2", "hunter2"),
    ("log in with the admin password S3cure!Pass and the user ops", "S3cure!Pass"),
    ("the password is: W1nter-2024!", "W1nter-2024"),
    ("the password is P@ssw0rd!", "P@ssw0rd"),
]


@pytest.mark.parametrize(("text", "hidden"), PROSE)
def test_credentials_stated_in_prose_are_redacted(text: str, hidden: str) -> None:
    out, counts = redact(text)
    assert hidden not in out and counts == Counter({"password": 1}), out
    assert out == text.replace(hidden, "<SECRET:password>")


# What technical prose and code comments say a credential is like, not what it is: kept as written.
PROSE_NOT_SECRETS = [
    "the password is required",
    "the token is invalid",
    "the password is hashed with bcrypt",
    "password is md5",
    "the API key is stored in Vault",
    "token is None",
    "the password is `${DB_PASSWORD}`",
    "password is <redacted>",
    "token: string",
    "the password is too short (8 chars)",
    f"The token fix landed in commit {fake(40, HEX, 61)}.",
    f"The commit for the token is {fake(40, HEX, 61)}",
    f"Token refresh: {fake(40, HEX, 61)} (revert)",
    f"the hash of the password is {fake(32, HEX, 62)}",
    "the password is SHA256 hashed",
    "the token is base64url-encoded",
    "the secret key is 32-byte random data",
    "the secret key is 32-bytes.",
    "the access token is OAuth2.",
    "the password is utf8mb4 encoded",
    "the token is int64",
    "the password is v1.2.3",
    "the password is at least 12 characters long",
    "The password is 8-64 characters.",
    "The API key is a 32-character hex string.",
    "the API key is X-API-Key",
    "the token type is Bearer",
    "# the password is read from ~/.pgpass",
    "the password is $DB_PASSWORD",
    "the password is changeme",
    "password is ***",
    "password is [REDACTED]",
    "the credentials are admin/admin",
    "the password is 'Passwort'",
    "the token is `self.token`",
    "the password is `settings.DB_PASSWORD`",
    "use the password field",
    "with password authentication2 enabled",
    "the secret is out",
    "if token is tok2:",
    "assert password is sentinel2",
    "password = secret2",
    "self.password is pw_1",
    "max_tokens = 4096",
    "The secret is db-creds-v2 in the prod namespace.",
    "the password is 2fa-enabled.",
    "the token is 0x1f2e3d4c5b6a7988" + "1f2e3d4c",
]


@pytest.mark.parametrize("text", PROSE_NOT_SECRETS)
def test_prose_about_credentials_is_kept(text: str) -> None:
    assert redact(text) == (text, Counter())


def test_git_shas_and_uuids_in_commit_messages_are_kept() -> None:
    sha = fake(40, HEX)
    message = (
        f"commit {sha}\nAuthor: Ada <ada@example.com>\n\n"
        f"Revert {sha[:12]} (fix token refresh)\n\nThis reverts commit {sha}.\n"
        "Job 123e4567-e89b-12d3-a456-426614174000 failed.\n"
    )
    assert redact(message) == (message, Counter())


def test_private_key_block_is_one_placeholder() -> None:
    text, counts = redact(f"before\n{RSA_KEY}\nafter\n")
    assert text == "before\n<SECRET:private_key>\nafter\n"
    assert counts == Counter({"private_key": 1})


@pytest.mark.parametrize("label", ["", "RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", "PGP "])
def test_private_key_labels(label: str) -> None:
    block = RSA_KEY.replace("RSA ", label)
    if label == "PGP ":
        block = block.replace("PRIVATE KEY-----", "PRIVATE KEY BLOCK-----")
    assert redact(block) == ("<SECRET:private_key>", Counter({"private_key": 1}))


def test_service_account_json_keeps_its_shape() -> None:
    key_id = fake(40, HEX)
    escaped = RSA_KEY.replace("\n", "\\n")
    text = (
        '{\n  "type": "service_account",\n  "project_id": "acme",\n'
        f'  "private_key_id": "{key_id}",\n  "private_key": "{escaped}\\n",\n'
        '  "client_email": "ci@acme.iam.gserviceaccount.com"\n}'
    )
    out, counts = redact(text)
    assert key_id not in out and fake(64, B64, seed=0) not in out
    assert '"private_key": "<SECRET:private_key>\\n",' in out
    assert '"private_key_id": "<SECRET:gcp_service_account>",' in out
    assert counts == Counter({"private_key": 1, "gcp_service_account": 1})


def test_truncated_private_key_without_end_line_is_still_redacted() -> None:
    head = RSA_KEY.split("\n-----END")[0]
    out, counts = redact(f'pem = """{head}\n"""\n')
    assert fake(64, B64, seed=3) not in out
    assert counts == Counter({"private_key": 1})


def test_counts_by_kind() -> None:
    text = (
        f"GITHUB_TOKEN=ghp_{fake(36, seed=1)}\n"
        f"backup_token = 'ghp_{fake(36, seed=2)}'\n"
        f"DB_PASSWORD=Sup3rS3cret\n"
        f"aws_access_key_id = AKIA{fake(16, string.ascii_uppercase + '234567')}\n"
    )
    out, counts = redact(text)
    assert counts == Counter({"github_token": 2, "password": 1, "aws_access_key": 1})
    assert out.count("<SECRET:") == 4


def test_a_token_inside_an_assignment_is_counted_once_under_its_own_kind() -> None:
    secret = "ghp_" + fake(36)
    assert redact(f'token = "{secret}"') == ('token = "<SECRET:github_token>"', Counter({"github_token": 1}))


def test_a_token_written_in_pieces_is_redacted_piece_by_piece_and_counted_once() -> None:
    """Code splits a token across literals to get past push protection; no piece holds all of it."""
    secret = "ghp_" + fake(36, seed=7)
    head, tail = secret[:14], secret[14:]
    text = f'BASE = "https://api.github.com/"\nTOKEN = (\n    "{head}"  # rotated yearly\n    "{tail}"\n)\n'
    # A comment between the pieces ends the chain: only what a compiler would join is joined.
    assert head in redact(text)[0]
    text = f'BASE = "https://api.github.com/"\nURL = BASE + "v3/" + "{head}" +\n    "{tail}" + "/repos"\n'
    out, counts = redact(text)
    assert out == (
        'BASE = "https://api.github.com/"\n'
        'URL = BASE + "v3/" + "<SECRET:github_token>" +\n    "<SECRET:github_token>" + "/repos"\n'
    )
    assert counts == Counter({"github_token": 1})
    assert redact(out) == (out, Counter())


@pytest.mark.parametrize(
    "text",
    [
        'greeting = "hello, " + "world"\n',
        'NOTE = ("Tokens start with ghp_ " "and hold 36 more characters")\n',
        'prefix = "ghp_" + suffix\n',  # a piece in a variable: nothing to join
        'KEY = "sk_live_" + "xxxxxxxxxxxxxxxxxxxxxxxx"\n',  # a documentation stand-in
    ],
)
def test_joined_literals_without_a_token_are_kept(text: str) -> None:
    assert redact(text) == (text, Counter())


def test_idempotent() -> None:
    text = "\n".join(template.replace("§", secret) for _, template, secret in CASES)
    text += "\nmail jane.doe@gmail.com from 81.2.69.142\n"
    once, counts = redact(text, pii=True)
    assert sum(counts.values()) >= len(CASES)
    assert redact(once, pii=True) == (once, Counter())
    assert redact(once) == (once, Counter())


def test_existing_placeholders_are_never_matched() -> None:
    text = (
        'password = "<SECRET:password>"\nSECRET: <SECRET:aws_secret_key>\n'
        "postgres://app:<SECRET:password>@db/app\nreply to <PII:email>\n"
    )
    assert redact(text, pii=True) == (text, Counter())


def test_pii_is_kept_unless_asked_for() -> None:
    text = "Reported by jane.doe@gmail.com from 81.2.69.142 and 2a00:1450:4001:81b::200e."
    assert redact(text) == (text, Counter())
    out, counts = redact(text, pii=True)
    assert out == "Reported by <PII:email> from <PII:ip_address> and <PII:ip_address>."
    assert counts == Counter({"email": 1, "ip_address": 2})


@pytest.mark.parametrize(
    "text",
    [
        "bind to 127.0.0.1, 0.0.0.0 or localhost; LAN 10.0.0.12 and 192.168.1.20; docs 203.0.113.7",
        "listen on [::1]:8080 or fe80::1; mask 255.255.255.0",
        'version = "1.2.3.4"; __version__ = "10.22.33.44"; requests>=2.31.0.1; see section 8.2.4.44',
        "resolvers 8.8.8.8 and 1.1.1.1",
        "Author: Ada <ada@example.com>, CI <build@acme.test>, GitHub <noreply@github.com>",
        "y = x@self.weight + bias; import helper@utils.py",
        "git@github.com:acme/app.git",
        "uuid 123e4567-e89b-12d3-a456-426614174000 and slices a[1::2], b[::3]",
    ],
)
def test_pii_skips_what_identifies_no_one(text: str) -> None:
    assert redact(text, pii=True) == (text, Counter())


def test_noreply_address_with_a_user_name_is_redacted() -> None:
    text = "Co-authored-by: Ada <12345+ada@users.noreply.github.com>"
    assert redact(text, pii=True) == ("Co-authored-by: Ada <<PII:email>>", Counter({"email": 1}))


def test_diff_lines() -> None:
    aws_value = fake(40, B64, 8)
    password = "pr0d-" + fake(12)
    diff = (
        "diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n@@ -1,3 +1,3 @@\n"
        " AWS_REGION=eu-west-1\n"
        "-AWS_SECRET_ACCESS_KEY=\n"
        f"+AWS_SECRET_ACCESS_KEY={aws_value}\n"
        f"+DB_PASSWORD={password}\n"
        "+DB_HOST=db.internal\n"
    )
    out, counts = redact(diff)
    assert out == diff.replace(aws_value, "<SECRET:aws_secret_key>").replace(password, "<SECRET:password>")
    assert counts == Counter({"aws_secret_key": 1, "password": 1})


def test_issue_comment() -> None:
    token = "ghp_" + fake(36, seed=7)
    comment = (
        "### Bug\n\nThe API returns 401 for me. Repro:\n\n```sh\n"
        f'curl -H "Authorization: token {token}" https://api.github.com/user\n```\n\n'
        "My config (password changed since!):\n\n"
        "```yaml\ndatabase:\n  user: app\n  password: W1nter-2024!\n```\n"
        "Commit 3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e did not fix it. /cc @maintainer"
    )
    out, counts = redact(comment)
    assert token not in out and "W1nter-2024!" not in out
    assert "Authorization: token <SECRET:github_token>" in out
    assert "  password: <SECRET:password>\n" in out
    assert "3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e" in out and "@maintainer" in out
    assert counts == Counter({"github_token": 1, "password": 1})


def test_text_that_grows_when_lower_cased_is_handled() -> None:
    # "İ".lower() is two characters, so spans in the lower-cased copy would be off by one.
    text = 'başlık = "İstanbul"\nPassword = "hunter2!x"\nDB_PASSWORD=Sup3rS3cret\n'
    out, counts = redact(text)
    assert out == 'başlık = "İstanbul"\nPassword = "<SECRET:password>"\nDB_PASSWORD=<SECRET:password>\n'
    assert counts == Counter({"password": 2})


def test_empty_text() -> None:
    assert redact("") == ("", Counter())


def test_rules_are_compiled_once_with_unique_placeholders() -> None:
    for rule in RULES + PII_RULES:
        assert rule.placeholder == f"<{rule.tag}:{rule.kind}>"
        assert rule.pattern.pattern  # compiled at import time


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,
        "password=" * 20_000,
        "-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 200_000,
        ("x" * 60 + "@") * 3_000,
        "token = '" + "\\'" * 50_000,
        ("1." * 100_000) + "1",
        ":" * 100_000 + "a" * 1000,
        "\n".join(f"key_{i} = 'value {i}'" for i in range(20_000)),
        '"sk" + x; ' * 30_000,
        '"sk" "sk" ' * 30_000,
        "the password is " * 20_000,
        "token:" * 30_000,
        ("x = (\n" + "".join(f'    "sk_{"ab1" * 300}"\n' for _ in range(16)) + ")\n") * 20,
    ],
    ids=[
        "letters",
        "keys",
        "unterminated-key",
        "at-signs",
        "escapes",
        "dots",
        "colons",
        "assignments",
        "keywords-beside-pieces",
        "one-long-chain",
        "prose-links",
        "prose-colons",
        "long-pieces",
    ],
)
def test_adversarial_inputs_take_linear_time(text: str) -> None:
    # Catastrophic backtracking would take minutes on these; linear regexes take milliseconds.
    start = time.perf_counter()
    redact(text, pii=True)
    assert time.perf_counter() - start < 5
