"""Language and kind of a file, from its name, its extension or its shebang line."""

from __future__ import annotations

import re

from repotune.records import Kind

EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyw": "python",
    ".pyi": "python",
    ".pyx": "cython",
    ".pxd": "cython",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".fs": "fsharp",
    ".swift": "swift",
    ".m": "objective-c",
    ".mm": "objective-c",
    ".rb": "ruby",
    ".php": "php",
    ".pl": "perl",
    ".pm": "perl",
    ".lua": "lua",
    ".r": "r",
    ".jl": "julia",
    ".dart": "dart",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".mli": "ocaml",
    ".clj": "clojure",
    ".vim": "vim",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".fish": "fish",
    ".ps1": "powershell",
    ".bat": "batch",
    ".cmd": "batch",
    ".sql": "sql",
    ".proto": "protobuf",
    ".graphql": "graphql",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "scss",
    ".sass": "sass",
    ".less": "less",
    ".vue": "vue",
    ".svelte": "svelte",
    ".json": "json",
    ".jsonc": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".conf": "config",
    ".xml": "xml",
    ".xsl": "xml",
    ".dtd": "xml",
    ".vbs": "vbscript",
    ".pem": "pem",
    ".tf": "hcl",
    ".hcl": "hcl",
    ".cmake": "cmake",
    ".mk": "makefile",
    ".gradle": "groovy",
    ".groovy": "groovy",
    ".asm": "assembly",
    ".s": "assembly",
    ".zig": "zig",
    ".nim": "nim",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "restructuredtext",
    ".txt": "text",
    ".adoc": "asciidoc",
    ".tex": "latex",
    ".ipynb": "jupyter",
}

FILENAMES: dict[str, str] = {
    "Makefile": "makefile",
    "GNUmakefile": "makefile",
    "makefile": "makefile",
    "Dockerfile": "dockerfile",
    "Containerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
    "Vagrantfile": "ruby",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
    "BUILD": "starlark",
    "BUILD.bazel": "starlark",
    "WORKSPACE": "starlark",
    "Justfile": "just",
    ".bashrc": "shell",
    ".zshrc": "shell",
    ".gitignore": "gitignore",
    ".dockerignore": "gitignore",
    ".editorconfig": "ini",
    "requirements.txt": "pip-requirements",
}

DOC_LANGUAGES = frozenset({"markdown", "restructuredtext", "text", "asciidoc", "latex"})

# Files with no extension that are prose: README, LICENSE, CHANGES and the like.
DOC_STEMS = frozenset(
    {
        "readme",
        "license",
        "licence",
        "copying",
        "changelog",
        "changes",
        "news",
        "history",
        "authors",
        "contributors",
        "contributing",
        "notice",
        "todo",
        "install",
        "security",
        "code_of_conduct",
    }
)

SHEBANG_INTERPRETERS: dict[str, str] = {
    "python": "python",
    "python3": "python",
    "python2": "python",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "dash": "shell",
    "ksh": "shell",
    "node": "javascript",
    "deno": "typescript",
    "ruby": "ruby",
    "perl": "perl",
    "php": "php",
    "lua": "lua",
    "Rscript": "r",
    "fish": "fish",
}

_SHEBANG = re.compile(r"^#!\s*(?:\S*/)?(?:env\s+(?:-\S+\s+)*)?([A-Za-z][\w.+-]*)")
_VERSION_SUFFIX = re.compile(r"[\d.]+$")

# Binary formats recognised by name alone, so their content is never read.
BINARY_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".bmp",
        ".ico",
        ".icns",
        ".webp",
        ".tif",
        ".tiff",
        ".psd",
        ".pdf",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".tar",
        ".jar",
        ".war",
        ".whl",
        ".egg",
        ".so",
        ".dylib",
        ".dll",
        ".exe",
        ".o",
        ".a",
        ".lib",
        ".obj",
        ".class",
        ".pyc",
        ".pyo",
        ".wasm",
        ".bin",
        ".dat",
        ".db",
        ".sqlite",
        ".sqlite3",
        ".mp3",
        ".mp4",
        ".wav",
        ".ogg",
        ".flac",
        ".avi",
        ".mov",
        ".mkv",
        ".ttf",
        ".otf",
        ".woff",
        ".woff2",
        ".eot",
        ".pt",
        ".pth",
        ".safetensors",
        ".gguf",
        ".onnx",
        ".h5",
        ".pkl",
        ".npy",
        ".npz",
        ".parquet",
        ".avro",
        ".orc",
        ".xlsx",
        ".xls",
        ".docx",
        ".doc",
        ".pptx",
        ".ppt",
        ".odt",
        ".iso",
        ".dmg",
        ".deb",
        ".rpm",
    }
)


def language_from_name(name: str) -> str | None:
    if name in FILENAMES:
        return FILENAMES[name]
    dot = name.rfind(".")
    if dot > 0:
        return EXTENSIONS.get(name[dot:].lower())
    return None


def language_from_shebang(first_line: str) -> str | None:
    match = _SHEBANG.match(first_line)
    if not match:
        return None
    interpreter = match.group(1)
    return SHEBANG_INTERPRETERS.get(interpreter) or SHEBANG_INTERPRETERS.get(
        _VERSION_SUFFIX.sub("", interpreter)
    )


def classify(name: str, text: str) -> tuple[Kind, str | None]:
    """Kind (code or doc) and language of a file named ``name`` with content ``text``."""
    language = language_from_name(name)
    if language is None and text.startswith("#!"):
        language = language_from_shebang(text[: text.find("\n") if "\n" in text else len(text)])
    if language in DOC_LANGUAGES:
        return Kind.DOC, language
    if language is None and name.split(".", 1)[0].lower() in DOC_STEMS:
        return Kind.DOC, "text"
    return Kind.CODE, language
