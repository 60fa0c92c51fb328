//! The spend counts on Redis, shared by every replica. Each step that must
//! be atomic across replicas is one Lua script:
//! - [`ADMIT`]: gives back the holds of creates whose lease ran out (a
//!   replica died mid-create), answers an Idempotency-Key replay, checks the
//!   quotas and budgets and holds the slot and reservation;
//! - [`CLOSE_INTENT`]: a create ended; its hold is given back (no task) or
//!   taken over by the task (re-taken if its lease had already run out);
//! - [`APPLY`]: an observation, as a compare-and-set on the task record plus
//!   the counter changes it implies, so a settlement happens exactly once
//!   however many replicas see the task end.
//!
//! Keys (under the prefix): `active:{tenant}` and `account:active` (slots),
//! `inflight` (a sorted set of intent ids by lease end), `win:{tenant}:{period}`
//! (a hash: `ut`, `rt`, `uc`, `rc` = used/reserved tokens/cost micros),
//! `usage:{tenant}:{day}` (a hash of `{model}|{counter}`), `usage-tenants`,
//! `open` (a set of task ids the reconciler asks about), `reconcile:lease`.

use crate::spend::{Refusal, Window};

/// How long a budget window's totals are kept (a month and some).
pub(super) const WINDOW_TTL_MS: u64 = 100 * 86_400_000;

/// ARGV: prefix, now, pending-key json, intent json, idem ttl, lease end, tenant,
/// tenant max (-1: none), account max (-1), reserved tokens, reserved cost, day,
/// month, window ttl, then per limit: window name, limit.
/// KEYS: idem key ('' without one), intent key, intent id.
pub(super) const ADMIT: &str = r#"
-- A negated zero would be sent as "-0", which HINCRBY refuses.
local function int(n) return string.format('%d', n) end
local p = ARGV[1]
local now = tonumber(ARGV[2])
local function release(id)
  local json = redis.call('GET', p .. 'intent:' .. id)
  redis.call('ZREM', p .. 'inflight', id)
  if not json then return end
  local ok, intent = pcall(cjson.decode, json)
  if not ok or type(intent.held) ~= 'table' then return end
  local h = intent.held
  redis.call('DECR', p .. 'active:' .. intent.tenant)
  redis.call('DECR', p .. 'account:active')
  for _, period in ipairs({h.day, h.month}) do
    local w = p .. 'win:' .. intent.tenant .. ':' .. period
    redis.call('HINCRBY', w, 'rt', int(-h.reserved_tokens))
    redis.call('HINCRBY', w, 'rc', int(-h.reserved_cost_micros))
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'inflight', '-inf', now)) do release(id) end
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'key', existing} end
end
local tenant = ARGV[7]
if tenant == '' then
  -- No admission: only the key and the intent.
  if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5]) end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  return {'ok'}
end
local tmax, amax = tonumber(ARGV[8]), tonumber(ARGV[9])
local active = tonumber(redis.call('GET', p .. 'active:' .. tenant) or '0')
local account = tonumber(redis.call('GET', p .. 'account:active') or '0')
if (tmax >= 0 and active + 1 > tmax) or (amax >= 0 and account + 1 > amax) then
  return {'refused', 'active'}
end
local rt, rc = tonumber(ARGV[10]), tonumber(ARGV[11])
local day = p .. 'win:' .. tenant .. ':' .. ARGV[12]
local month = p .. 'win:' .. tenant .. ':' .. ARGV[13]
local i = 15
while ARGV[i] do
  local window, limit = ARGV[i], tonumber(ARGV[i + 1])
  local key = (string.sub(window, 1, 5) == 'daily') and day or month
  local totals = redis.call('HMGET', key, 'ut', 'rt', 'uc', 'rc')
  local committed, this
  if string.find(window, 'cost') then
    committed = tonumber(totals[3] or '0') + tonumber(totals[4] or '0')
    this = rc
  else
    committed = tonumber(totals[1] or '0') + tonumber(totals[2] or '0')
    this = rt
  end
  if committed + this > limit then return {'refused', window} end
  i = i + 2
end
redis.call('INCR', p .. 'active:' .. tenant)
redis.call('INCR', p .. 'account:active')
for _, key in ipairs({day, month}) do
  redis.call('HINCRBY', key, 'rt', rt)
  redis.call('HINCRBY', key, 'rc', rc)
  redis.call('PEXPIRE', key, ARGV[14])
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', p .. 'inflight', ARGV[6], KEYS[3])
return {'ok'}
"#;

/// ARGV: prefix, intent id, 1 if the task takes over the hold (else it is
/// given back). A hold whose lease ran out was given back already: taking it
/// over takes it again.
pub(super) const CLOSE_INTENT: &str = r#"
local function int(n) return string.format('%d', n) end
local p, id, take = ARGV[1], ARGV[2], ARGV[3] == '1'
local json = redis.call('GET', p .. 'intent:' .. id)
local still_held = redis.call('ZREM', p .. 'inflight', id) == 1
redis.call('DEL', p .. 'intent:' .. id)
if not json then return 0 end
local ok, intent = pcall(cjson.decode, json)
if not ok or type(intent.held) ~= 'table' then return 0 end
local h = intent.held
local function change(sign)
  redis.call('INCRBY', p .. 'active:' .. intent.tenant, sign)
  redis.call('INCRBY', p .. 'account:active', sign)
  for _, period in ipairs({h.day, h.month}) do
    local w = p .. 'win:' .. intent.tenant .. ':' .. period
    redis.call('HINCRBY', w, 'rt', int(sign * h.reserved_tokens))
    redis.call('HINCRBY', w, 'rc', int(sign * h.reserved_cost_micros))
  end
end
if take and not still_held then change(1) end
if not take and still_held then change(-1) end
return 0
"#;

/// KEYS[1]: the task record. ARGV: the record as read, the new record, then
/// operations of five: kind (`i` INCRBY, `h` HINCRBY, `s+` SADD, `s-` SREM),
/// key, field or member, amount, TTL in ms (`` for none).
/// Returns 0 when the record changed since it was read (read again and retry).
pub(super) const APPLY: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
local i = 3
while ARGV[i] do
  local kind, key, field, n, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if kind == 'i' then redis.call('INCRBY', key, n)
  elseif kind == 'h' then redis.call('HINCRBY', key, field, n)
  elseif kind == 's+' then redis.call('SADD', key, field)
  elseif kind == 's-' then redis.call('SREM', key, field) end
  if ttl ~= '' then redis.call('PEXPIRE', key, ttl) end
  i = i + 5
end
return 1
"#;

pub(super) fn refusal_of(reason: &str) -> Refusal {
    Window::ALL
        .into_iter()
        .find(|w| w.as_str() == reason)
        .map_or(Refusal::ActiveTasks, Refusal::Budget)
}

/// The counter operations [`APPLY`] runs with a record change.
#[derive(Default)]
pub(super) struct Ops(pub(super) Vec<(&'static str, String, String, i64, Option<u64>)>);

impl Ops {
    pub(super) fn incr(&mut self, key: String, n: i64) {
        self.0.push(("i", key, String::new(), n, None));
    }

    pub(super) fn hincr(&mut self, key: &str, field: &str, n: i64, ttl_ms: u64) {
        self.0.push(("h", key.to_string(), field.to_string(), n, Some(ttl_ms)));
    }

    pub(super) fn sadd(&mut self, key: String, member: &str) {
        self.0.push(("s+", key, member.to_string(), 0, None));
    }

    pub(super) fn srem(&mut self, key: String, member: &str) {
        self.0.push(("s-", key, member.to_string(), 0, None));
    }

    pub(super) fn add_to(&self, cmd: &mut redis::Cmd) {
        for (kind, key, field, n, ttl) in &self.0 {
            cmd.arg(*kind)
                .arg(key)
                .arg(field)
                .arg(n)
                .arg(ttl.map_or(String::new(), |t| t.to_string()));
        }
    }
}

/// The usage-hash field of one counter of one model.
pub(super) fn usage_field(model: &str, counter: &str) -> String {
    format!("{model}|{counter}")
}
