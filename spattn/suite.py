"""The standard suite: seven patterns every spattn benchmark and cross-backend test uses, so
numbers compare across the project (and with your own runs)."""

SUITE: dict[str, str] = {
    "S1": "local(64) | global([0,-1])",
    "S2": "strided(128)",
    "S3": "fixed(128, 16) & causal",
    "S4": "bigbird(64, [0:4], 8)",
    "S5": "dilated(32, 4) | local(16)",
    "S6": "streaming(4, 256)",
    "S7": "block(256)",
}
