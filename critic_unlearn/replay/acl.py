"""What a run may do on Redis, as one ACL rule, and a check at connect that the user has it.

A Redis ACL user for a run needs the commands below and the keys of two prefixes of the run's
namespace NS (replay.namespace, the run name when unset; `keys.py` has the layout):

    rb:{NS:*     the replay shards (every URL in replay.url and replay.shards)
    w:{NS}:*     the durable adapter copy (replay.url only)

Lua scripts run their commands as the calling user, so the scripts' commands are in the list.
As an admin, create the user with `acl_rules` (one ACL SETUSER line; quote it in a shell):

    python -c 'from critic_unlearn.replay.acl import acl_rules; print(acl_rules("NS", "PW"))'
    redis-cli ACL SETUSER critic reset on '>PW' '~rb:{NS:*' '~w:{NS}:*' -@all +ping ...

and give the run replay.url = redis://critic@host:port/0 with the password in the environment
variable named by replay.password_env (or in the URL). Left out on purpose: CONFIG GET (it reads
server settings, secrets included; the maxmemory-policy warning is then skipped), CLIENT SETINFO
(redis-py's library tag; it ignores the refusal), EVAL, KEYS, FLUSH*. SCAN is granted because
`clear()` finds a namespace's keys with it; it lists other runs' key names, which the user may
neither read nor change.

`denied` asks the server in one Lua call (redis.acl_check_cmd, Redis 7 and later) whether the
connected user may run each command on a key of this run, so a missing grant is one error when
a writer, sampler or weight store connects, naming everything that is missing, instead of a
refusal in the middle of a run.
"""

from __future__ import annotations

from redis import Redis

from critic_unlearn.replay.keys import Keys, WeightKeys, check_namespace

# command -> arguments for the check, "K" standing for a key of the run ("script|load": a
# subcommand). Every command a replay shard's clients or scripts send:
SHARD_COMMANDS: dict[str, tuple[str, ...]] = {
    "ping": (), "multi": (), "exec": (), "scan": ("0",),
    "evalsha": ("0" * 40, "1", "K"), "script|load": ("return 1",),
    "get": ("K",), "set": ("K", "v"), "del": ("K",), "unlink": ("K",),
    "rename": ("K", "K"), "persist": ("K",),
    "hget": ("K", "f"), "hmget": ("K", "f"), "hset": ("K", "f", "v"), "hdel": ("K", "f"),
    "hgetall": ("K",), "hincrby": ("K", "f", "1"),
    "zadd": ("K", "1", "m"), "zcard": ("K",), "zcount": ("K", "0", "1"),
    "zmscore": ("K", "m"), "zrange": ("K", "0", "1"), "zrem": ("K", "m"), "zscore": ("K", "m"),
}
# ... and the weight store's (on replay.url):
WEIGHT_COMMANDS: dict[str, tuple[str, ...]] = {
    "ping": (), "multi": (), "exec": (), "get": ("K",), "set": ("K", "v"), "del": ("K",),
    "hget": ("K", "f"), "hset": ("K", "f", "v"),
}
# granted, not checked: SELECT is sent at connect only for a URL's db other than 0
CONNECT_COMMANDS = ("select",)

Need = tuple[str, ...]  # one acl_check_cmd call: command, subcommand?, arguments

_CHECK = """
if not redis.acl_check_cmd then return -1 end
local denied, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, i + 1, i + n))
  if ok and not allowed then table.insert(denied, i) end
  i = i + n + 1
end
return denied
"""


def key_patterns(namespace: str) -> tuple[str, str]:
    """The ACL key patterns of one run: its replay shards and its adapter copy."""
    ns = check_namespace(namespace)  # no ':' or glob characters: exactly this run's keys
    return f"rb:{{{ns}:*", f"w:{{{ns}}}:*"  # Keys(ns, s).prefix for every s; WeightKeys(ns)


def commands() -> list[str]:
    """Every command a run sends, each once, sorted."""
    return sorted({*SHARD_COMMANDS, *WEIGHT_COMMANDS, *CONNECT_COMMANDS})


def acl_rule_list(namespace: str, password: str | None = None) -> list[str]:
    """ACL SETUSER arguments: with `password`, a fresh user ("reset on >password"); without,
    the grants to add to an existing user."""
    user = ["reset", "on", f">{password}"] if password is not None else []
    keys = [f"~{p}" for p in key_patterns(namespace)]
    grants = [f"+{c}" for c in commands()]
    return [*user, *keys, *(["-@all"] if password is not None else []), *grants]


def acl_rules(namespace: str, password: str | None = None) -> str:
    """`acl_rule_list` as one line for `ACL SETUSER NAME <rules>` (redis-cli, a config file)."""
    return " ".join(acl_rule_list(namespace, password))


def shard_needs(namespace: str, shard: int) -> list[Need]:
    """What the clients of shard `shard` of the run must be allowed, for `denied`."""
    return _needs(SHARD_COMMANDS, Keys(check_namespace(namespace), shard).head)


def weight_needs(namespace: str) -> list[Need]:
    """What the weight store's client must be allowed, for `denied`."""
    return _needs(WEIGHT_COMMANDS, WeightKeys(check_namespace(namespace)).blob)


def _needs(table: dict[str, tuple[str, ...]], key: str) -> list[Need]:
    return [(*name.split("|"), *(key if a == "K" else a for a in args))
            for name, args in table.items()]


def denied(r: Redis, needs: list[Need]) -> list[str] | None:
    """The needs the connected user may not run ("hset w:{ns}:blob f v"), [] when all are
    allowed, None when the server cannot tell (no redis.acl_check_cmd before Redis 7). Runs
    SCRIPT LOAD and EVALSHA, themselves needs: a refusal of them raises redis' NoPermissionError.
    """
    argv: list[str] = []
    for need in needs:
        argv += [str(len(need)), *need]
    sha = r.script_load(_CHECK)
    reply = r.evalsha(sha, 0, *argv)
    if reply == -1:
        return None
    at = {int(i) - 1 for i in reply}  # 1-based Lua positions of each need's count
    out, pos = [], 0
    for need in needs:
        if pos in at:
            out.append(" ".join(need))
        pos += len(need) + 1
    return out
