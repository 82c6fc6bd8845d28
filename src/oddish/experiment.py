"""Human-friendly experiment names for submissions that do not name one."""

import secrets

_ADJECTIVES = (
    "amber",
    "brave",
    "calm",
    "deft",
    "eager",
    "fuzzy",
    "gentle",
    "humble",
    "icy",
    "jolly",
    "keen",
    "lucky",
    "mellow",
    "nimble",
    "odd",
    "plucky",
    "quiet",
    "rapid",
    "sunny",
    "tidy",
)
_NOUNS = (
    "otter",
    "falcon",
    "badger",
    "heron",
    "lynx",
    "marten",
    "newt",
    "ocelot",
    "puffin",
    "quail",
    "raven",
    "stoat",
    "tapir",
    "urchin",
    "vole",
    "walrus",
    "yak",
    "zebu",
    "gecko",
    "ibis",
)


def generate_experiment_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000):03d}"
