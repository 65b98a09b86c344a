"""Credentials that name themselves: a provider's prefix (``ghp_``, ``dapi``, ``hvs.``) or fixed shape.

One entry per family: its kind, its keywords (lower case, at least one inside every match: the
engine runs the pattern only on lines that hold one) and its pattern. Patterns follow gitleaks'
rules of the same family (``config/gitleaks.toml``, MIT licence), narrowed to whole tokens by a
boundary check instead of ``\\b`` (a leading ``\\b`` would stop the regex engine from skipping ahead
to the literal prefix), and by default the token must mix letters and digits, which random tokens
do and words, identifiers and documentation stand-ins (``ghp_xxxxxxxx...``) do not.
"""

from __future__ import annotations

import re

from repotune.clean.secrets.checks import ALNUM, TOKEN_CHARS, all_of, bounded, letters_and_digits, mixed_case
from repotune.clean.secrets.engine import Check, SecretRule, rule


def _token(
    kind: str,
    keywords: str,
    pattern: str,
    *,
    bounds: frozenset[str] | None = TOKEN_CHARS,
    random: Check | None = letters_and_digits,
    whole_text: bool = False,
) -> SecretRule:
    """A family: ``keywords`` space-separated; ``bounds``: characters that may not touch the match
    (``None``: any may); ``random``: the check on the token's characters (``None``: none)."""
    checks = [c for c in (bounded(bounds) if bounds is not None else None, random) if c is not None]
    check = all_of(*checks) if len(checks) > 1 else (checks[0] if checks else None)
    return rule(kind, keywords, pattern, check=check, whole_text=whole_text)


_HEX = "0-9a-fA-F"
_B64URL = "A-Za-z0-9_-"
_BASE64_RUN = r"[A-Za-z0-9+/=]{16,}+"


def _private_key_ok(text: str, match: re.Match[str]) -> bool:
    # A PEM parser's marker strings, or docs with "..." for a body, have no key material to hide.
    body = match.group(0).split("-----")[2]
    return re.search(r"[A-Za-z0-9+/]{16}", body) is not None


PRIVATE_KEY_RULES: tuple[SecretRule, ...] = (
    SecretRule(
        "private_key",
        re.compile(
            r"-----BEGIN[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]{0,16384}?-----END[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----"
            # No END line (a truncated paste, or a diff cut at its size cap): take the base64 body,
            # quoted, in `\n`-joined lines, or in a diff's `+`/`-` lines.
            rf"|(?:(?:\\[nr]|\n[+-]|[\s\"',])*+{_BASE64_RUN})++)"
        ),
        ("-----begin",),
        check=_private_key_ok,
        whole_text=True,
    ),
)


def _encoded_private_key_ok(text: str, match: re.Match[str]) -> bool:
    """Base64 that decodes to a PEM private key's header (a kubeconfig's `client-key-data`, a Secret's
    `tls.key`), not a certificate's."""
    import base64
    import binascii

    head = match.group(0)[:96]
    try:
        decoded = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return False
    return b"PRIVATE KEY" in decoded


TOKEN_RULES: tuple[SecretRule, ...] = (
    # A PEM private key in base64 ("-----BEGIN" is "LS0tLS1CRUdJTi"): kubeconfig, Secret data, Helm values.
    rule(
        "private_key",
        ("ls0tls1crudjti",),
        r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{40,}+={0,2}",
        check=all_of(bounded(), _encoded_private_key_ok),
    ),
    # Source control and package registries.
    _token(
        "github_token",
        "ghp_ gho_ ghu_ ghs_ ghr_ github_pat_",
        r"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,242}",
        random=None,
    ),
    _token(
        "gitlab_token",
        "glpat- gldt- glrt- glptt- glft- glcbt- glsoat- glagent- gloas- glimt- glffct- gr1348941",
        rf"gl(?:pat|dt|rt|ptt|ft|cbt|soat|agent|oas|imt|ffct)-[{_B64URL}]{{20,300}}(?:\.[0-9a-z]{{9}})?"
        rf"|GR1348941[{_B64URL}]{{20}}",
        random=None,
    ),
    _token("gitlab_token", "_gitlab_session=", r"_gitlab_session=(?P<secret>[0-9a-z]{32})"),
    _token("bitbucket_token", "atbb", r"ATBB[A-Za-z0-9_=.-]{32}"),
    _token("npm_token", "npm_", r"npm_[A-Za-z0-9]{36}"),
    _token("pypi_token", "pypi-age", rf"pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[{_B64URL}]{{50,1000}}"),
    _token("rubygems_token", "rubygems_", r"rubygems_[a-f0-9]{48}"),
    _token("clojars_token", "clojars_", r"CLOJARS_[A-Za-z0-9]{60}"),
    _token("dockerhub_token", "dckr_pat_ dckr_oat_", rf"dckr_(?:pat|oat)_[{_B64URL}]{{27,64}}"),
    _token("artifactory_token", "akcp cmvmd", r"AKCp[A-Za-z0-9]{69}|cmVmd[A-Za-z0-9]{59}"),
    _token("sourcegraph_token", "sgp_", rf"sgp_(?:[{_HEX}]{{16}}_|local_)?[{_HEX}]{{40}}"),
    _token("postman_token", "pmak-", rf"PMAK-[{_HEX}]{{24}}-[{_HEX}]{{34}}"),
    _token("readme_token", "rdme_", r"rdme_[a-z0-9]{70}"),
    _token("sonar_token", "squ_ sqp_ sqa_", r"sq[apu]_[a-f0-9]{40}"),
    # Clouds, infrastructure and secret stores.
    _token(
        "aws_access_key",
        "akia asia abia acca a3t",
        r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
        bounds=ALNUM,
    ),
    # Temporary credentials' session tokens, by their base64 header ("\x21\n\torigin", "\x17\n\x06er/aws").
    _token(
        "aws_session_token",
        "iqojb3jpz2lu fwogzxivyxdz",
        r"(?:IQoJb3JpZ2lu|FwoGZXIvYXdz)[A-Za-z0-9+/]{80,}={0,2}",
    ),
    _token("gcp_api_key", "aiza", rf"AIza[{_B64URL}]{{35}}", random=None),
    _token(
        "google_oauth",
        "gocspx- ya29. 1//0",
        rf"GOCSPX-[{_B64URL}]{{28}}|ya29\.[{_B64URL}]{{30,}}|1//0[{_B64URL}]{{40,}}",
    ),
    # Entra ID (Azure AD) client secrets: 3 characters, a digit, "Q~", then 31 to 34 more.
    _token(
        "azure_client_secret",
        "q~",
        r"[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}",
        bounds=TOKEN_CHARS | {"~", "."},
        random=None,
    ),
    _token(
        "azure_sas_token",
        "sig=",
        r"[?&]sig=(?P<secret>[A-Za-z0-9%+/]{40,}(?:%3D|=){0,2})",
        bounds=None,
    ),
    _token("alibaba_access_key", "ltai", r"LTAI[A-Za-z0-9]{20}", bounds=ALNUM),
    _token("digitalocean_token", "dop_v1_ doo_v1_ dor_v1_", r"do[opr]_v1_[a-f0-9]{64}"),
    _token("cloudflare_ca_key", "v1.0-", r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}"),
    _token(
        "flyio_token",
        "fo1_ fm1a_ fm1r_ fm2_",
        rf"fo1_[{_B64URL}]{{43}}|fm(?:1[ar]|2)_[A-Za-z0-9+/]{{100,}}={{0,3}}",
    ),
    _token("heroku_key", "hrku-aa", rf"HRKU-AA[{_B64URL}]{{58}}"),
    _token("scalingo_token", "tk-us-", rf"tk-us-[{_B64URL}]{{48}}"),
    _token("openshift_token", "sha256~", rf"sha256~[{_B64URL}]{{43}}"),
    _token("terraform_token", "atlasv1", r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}"),
    _token("pulumi_token", "pul-", r"pul-[a-f0-9]{40}"),
    _token("vault_token", "hvs. hvb. hvr.", rf"hv[sbr]\.[{_B64URL}]{{24,300}}"),
    _token(
        "doppler_token",
        "dp.pt. dp.st. dp.ct. dp.sa. dp.scim. dp.audit.",
        r"dp\.(?:pt|st|ct|sa|scim|audit)\.[A-Za-z0-9]{40,44}",
    ),
    _token("planetscale_token", "pscale_", r"pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_.=-]{32,64}"),
    _token("databricks_token", "dapi", r"dapi[a-f0-9]{32}(?:-\d)?"),
    _token("infracost_token", "ico-", r"ico-[A-Za-z0-9]{32}"),
    _token(
        "onepassword_token",
        "a3- ops_eyj",
        r"A3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}"
        r"|ops_eyJ[A-Za-z0-9+/]{250,}={0,3}",
    ),
    _token(
        "harness_token", "pat. sat.", rf"(?:pat|sat)\.[{_B64URL}]{{22}}\.[A-Za-z0-9]{{24}}\.[A-Za-z0-9]{{20}}"
    ),
    _token("octopus_key", "api-", r"API-[A-Z0-9]{26}", bounds=ALNUM),
    # Monitoring, communication and SaaS.
    _token(
        "slack_token",
        "xox xapp-",
        r"x(?:ox[abposre]|app-\d)-[0-9A-Za-z-]{10,250}",
    ),
    _token(
        "slack_webhook",
        "hooks.slack.com",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/+-]{20,255})",
        bounds=None,
        random=None,
    ),
    _token(
        "discord_webhook",
        "discord",
        rf"discord(?:app)?\.com/api/webhooks/(?P<secret>\d{{17,20}}/[{_B64URL}]{{60,72}})",
        bounds=None,
    ),
    _token(
        "teams_webhook",
        "webhook.office.com",
        r"webhook\.office\.com/webhookb2/(?P<secret>[0-9a-f-]{36}@[0-9a-f-]{36}/IncomingWebhook/[0-9a-f]{32}"
        r"/[0-9a-f-]{36}(?:/[A-Za-z0-9_-]+)?)",
        bounds=None,
    ),
    _token("telegram_bot_token", ":aa", rf"\d{{8,10}}:AA[{_B64URL}]{{33}}"),
    _token("sendgrid_key", "sg.", rf"SG\.[{_B64URL}]{{22}}\.[{_B64URL}]{{43}}", random=None),
    _token("sendinblue_key", "xkeysib- xsmtpsib-", r"x(?:keysib|smtpsib)-[a-f0-9]{64}-[A-Za-z0-9]{16}"),
    _token("mailgun_key", "key-", r"key-[0-9a-f]{32}"),
    _token("mailchimp_key", "-us", r"[0-9a-f]{32}-us\d{1,2}"),
    # Twilio API key SIDs. "sk" is in most texts, so the pattern runs over the whole text, where the
    # regex engine skips to its "SK" as fast as a substring search would.
    _token("twilio_key", "sk", rf"SK[{_HEX}]{{32}}", bounds=ALNUM, whole_text=True),
    _token(
        "sentry_token",
        "sntryu_ sntrys_",
        r"sntryu_[a-f0-9]{64}|sntrys_eyJ[A-Za-z0-9+/=]{20,400}_[A-Za-z0-9+/]{43}",
    ),
    _token("dynatrace_token", "dt0c01.", r"dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}"),
    _token("newrelic_key", "nrak- nrii- nrjs-", r"NRAK-[A-Z0-9]{27}|NRII-[A-Za-z0-9-]{32}|NRJS-[a-f0-9]{19}"),
    _token(
        "grafana_token",
        "eyjrijoi glc_ glsa_",
        rf"eyJrIjoi[A-Za-z0-9]{{70,400}}={{0,3}}|glc_[A-Za-z0-9+/]{{32,400}}={{0,3}}|glsa_[A-Za-z0-9]{{32}}_[{_HEX}]{{8}}",
    ),
    _token("atlassian_token", "atatt3", r"ATATT3[A-Za-z0-9_=-]{186}"),
    _token("linear_key", "lin_api_ lin_oauth_", r"lin_(?:api|oauth)_[A-Za-z0-9]{40,64}"),
    _token("notion_token", "ntn_", r"ntn_[0-9]{11}[A-Za-z0-9]{35}"),
    _token("shopify_token", "shpat_ shpca_ shppa_ shpss_", rf"shp(?:at|ca|pa|ss)_[{_HEX}]{{32}}"),
    _token("typeform_token", "tfp_", r"tfp_[A-Za-z0-9_.=-]{59}"),
    _token("frameio_token", "fio-u-", r"fio-u-[A-Za-z0-9_=-]{64}"),
    _token("maxmind_key", "_mmk", r"[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk"),
    _token("adobe_client_secret", "p8e-", r"p8e-[A-Za-z0-9]{32}"),
    _token("mapbox_token", "sk.eyj", rf"sk\.eyJ[{_B64URL}]{{50,}}\.[{_B64URL}]{{20,}}"),
    # Payments and commerce.
    _token(
        "stripe_key",
        "sk_live_ sk_test_ sk_prod_ rk_live_ rk_test_ rk_prod_ whsec_",
        r"[sr]k_(?:live|test|prod)_[0-9A-Za-z]{10,247}|whsec_[A-Za-z0-9]{24,128}",
        random=None,
    ),
    _token(
        "square_token", "sq0atp- sq0csp- eaaa", rf"sq0(?:atp|csp)-[{_B64URL}]{{22,43}}|EAAA[{_B64URL}]{{60}}"
    ),
    _token("facebook_token", "eaam eaac", r"EAA[MC][A-Za-z0-9]{100,}"),
    _token("flutterwave_key", "flwseck", r"FLWSECK(?:_TEST)?-[a-hA-H0-9]{32}-X"),
    _token("shippo_token", "shippo_", rf"shippo_(?:live|test)_[{_HEX}]{{40}}"),
    _token("easypost_key", "ezak eztk", r"EZ[AT]K[A-Za-z0-9]{54}"),
    _token("duffel_token", "duffel_", r"duffel_(?:test|live)_[A-Za-z0-9_=-]{43}"),
    # AI services. OpenAI keys are `sk-` then one alphanumeric run, or `sk-proj-` and the like;
    # Anthropic's are `sk-ant-`. Kebab-case words (`sk-learn-...`) match neither.
    _token(
        "anthropic_key", "sk-ant-", rf"sk-ant-(?:api|admin|oat|sid)\d{{2}}-[{_B64URL}]{{40,200}}", random=None
    ),
    _token(
        "openai_key", "sk-", rf"sk-(?:(?:proj|svcacct|admin)-[{_B64URL}]{{20,250}}|[A-Za-z0-9]{{32,250}})"
    ),
    _token(
        "huggingface_token", "hf_ api_org_", r"hf_[A-Za-z0-9]{34,40}|api_org_[A-Za-z]{34}", random=mixed_case
    ),
    _token("perplexity_key", "pplx-", r"pplx-[A-Za-z0-9]{48}"),
    _token("groq_key", "gsk_", r"gsk_[A-Za-z0-9]{52}"),
    _token("xai_key", "xai-", r"xai-[A-Za-z0-9]{80}"),
    _token("replicate_token", "r8_", r"r8_[A-Za-z0-9]{37}"),
    _token("langsmith_key", "lsv2_", r"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}"),
    _token("prefect_key", "pnu_", r"pnu_[A-Za-z0-9]{36}"),
    _token("age_secret_key", "age-secret-key-1", r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}"),
    _token(
        "jwt",
        "eyj",
        rf"eyJ[{_B64URL}]{{8,}}\.eyJ[{_B64URL}]{{8,}}\.[{_B64URL}]*",
        random=None,
    ),
)
