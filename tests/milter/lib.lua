-- tests/milter/lib.lua: helpers shared by the t-*.lua miltertest scripts.
--
-- run.sh starts miltertest with these globals (-D name=value):
--   sock  the milter address in miltertest syntax, "inet:PORT@127.0.0.1"
--   dir   this test's work directory (filled-in configs, daemon.log)
--   conf  the configuration file the daemon runs with (dir/tlspolicy.conf)
--   log   the daemon's log (its stderr), dir/daemon.log
--   pid   the daemon's process id
--   lib   this file
-- A script starts with `dofile(lib)` and uses the functions below. Every
-- check raises a Lua error naming what was expected and what came back, so
-- miltertest exits non-zero and run.sh prints FAIL with that message.

if not (sock and dir and conf and log and pid) then
  mt.echo("FAILED run me through tests/milter/run.sh (globals sock, dir, conf, log, pid are not set)")
  error("globals not set")
end

-- Names for reply codes, for readable failures.
local reply_names = {}
for _, n in ipairs({ "SMFIR_CONTINUE", "SMFIR_ACCEPT", "SMFIR_REJECT", "SMFIR_TEMPFAIL",
                     "SMFIR_DISCARD", "SMFIR_REPLYCODE", "SMFIR_SKIP" }) do
  if _G[n] then reply_names[_G[n]] = n end
end
function reply_name(r)
  if r == nil then return "nil" end
  if reply_names[r] then return reply_names[r] end
  if r == 0 then return "no reply yet" end
  return string.format("'%s' (%d)", string.char(r), r)
end

-- step(): a label for the current part of a script, shown in failures.
local current_step = "start"
function step(s)
  current_step = s
  mt.echo("-- " .. s)
end

-- Raises the failure. Debian's miltertest (2.11) exits 1 on a Lua error but
-- does not print its message, so it is echoed to stdout first.
local function raise(msg, level)
  msg = string.format("FAILED [%s] %s", current_step, msg)
  mt.echo(msg)
  error(msg, level + 1)
end

function fail(msg) raise(msg, 2) end

function check(cond, msg)
  if not cond then raise(msg, 2) end
end

-- Some mt.* functions raise a Lua error instead of returning one (mt.connect
-- when nothing listens, a step the milter negotiated away): wrap them all so
-- that message is echoed as well.
for name, f in pairs(mt) do
  if type(f) == "function" and name ~= "echo" then
    mt[name] = function(...)
      local r = table.pack(pcall(f, ...))
      if not r[1] then raise(string.format("mt.%s(): %s", name, tostring(r[2])), 2) end
      return table.unpack(r, 2, r.n)
    end
  end
end

-- mt.* functions return nil on success or an error string.
local function ok(ret, what)
  if ret ~= nil then raise(string.format("%s failed: %s", what, tostring(ret)), 3) end
end

-- expect_reply(conn, SMFIR_X or {SMFIR_X, SMFIR_Y}, what)
function expect_reply(conn, want, what)
  local got = mt.getreply(conn)
  local wants = type(want) == "table" and want or { want }
  for _, w in ipairs(wants) do
    if got == w then return got end
  end
  local names = {}
  for _, w in ipairs(wants) do names[#names + 1] = reply_name(w) end
  raise(string.format("%s: expected %s, got %s", what, table.concat(names, " or "), reply_name(got)), 2)
end

-- Opens a connection and sends the SMTP connect. opts:
--   ip            client address (default 203.0.113.5: no rule, not outbound)
--   daemon_name   {daemon_name} at SMFIC_CONNECT (Postfix: the master.cf service)
function connect(opts)
  opts = opts or {}
  local conn = mt.connect(sock, 100, 0.05)
  check(conn ~= nil, "mt.connect(" .. sock .. ") failed")
  -- Explicit negotiation: miltertest then knows which steps the milter
  -- asked to skip or not to answer (SMFIP_NR_HDR, SMFIP_NOBODY).
  ok(mt.negotiate(conn, nil, nil, nil), "mt.negotiate")
  if opts.daemon_name then
    ok(mt.macro(conn, SMFIC_CONNECT, "{daemon_name}", opts.daemon_name), "mt.macro(SMFIC_CONNECT)")
  end
  ok(mt.conninfo(conn, "client.test", opts.ip or "203.0.113.5"), "mt.conninfo")
  -- The milter asks for no reply to connect and HELO (they never reject).
  if not mt.test_option(conn, SMFIP_NR_CONN) then expect_reply(conn, SMFIR_CONTINUE, "connect") end
  return conn
end

-- HELO/EHLO. tls = nil: no TLS macros (plain SMTP, or the EHLO before
-- STARTTLS); tls = { version = "TLSv1.3", bits = 256 }: the macros Postfix
-- sends with the EHLO after STARTTLS.
function helo(conn, tls)
  if tls then
    ok(mt.macro(conn, SMFIC_HELO, "{tls_version}", tls.version, "{cipher}", tls.cipher or "TLS_AES_256_GCM_SHA384",
                "{cipher_bits}", tostring(tls.bits)), "mt.macro(SMFIC_HELO)")
  end
  -- The milter skips HELO (SMFIP_NOHELO) and reads the TLS macros at MAIL,
  -- as Postfix sends them: the HELO-stage macros go out all the same.
  if mt.test_option(conn, SMFIP_NOHELO) then return end
  ok(mt.helo(conn, "client.test"), "mt.helo")
  if not mt.test_option(conn, SMFIP_NR_HELO) then expect_reply(conn, SMFIR_CONTINUE, "helo") end
end

-- Macros are sent only where a test needs them: miltertest does not set
-- TCP_NODELAY, so each macro packet followed by its command costs a ~40 ms
-- Nagle/delayed-ACK stall on loopback TCP.

-- MAIL FROM. opts.auth: the SASL login ({auth_authen}). Returns the
-- milter's reply (compare with SMFIR_*).
function mail(conn, from, opts)
  opts = opts or {}
  if opts.auth then
    ok(mt.macro(conn, SMFIC_MAIL, "{auth_type}", "PLAIN", "{auth_authen}", opts.auth), "mt.macro(SMFIC_MAIL)")
  elseif opts.auth_sent then
    -- Replaces the MAIL macros of an earlier authenticated transaction.
    ok(mt.macro(conn, SMFIC_MAIL, "{auth_type}", ""), "mt.macro(SMFIC_MAIL)")
  end
  ok(mt.mailfrom(conn, "<" .. from .. ">"), "mt.mailfrom")
  return mt.getreply(conn)
end

function rcpt(conn, to)
  ok(mt.rcptto(conn, "<" .. to .. ">"), "mt.rcptto")
  return mt.getreply(conn)
end

-- DATA, the headers (a list of {name, value}; default one Subject:), end
-- of headers, end of message. qid: the queue ID ("i"), sent with the
-- end-of-message macros as Postfix does. Returns the final reply.
function message(conn, headers, qid)
  ok(mt.data(conn), "mt.data")
  expect_reply(conn, SMFIR_CONTINUE, "data")
  headers = headers or { { "Subject", "test" } }
  for _, h in ipairs(headers) do
    ok(mt.header(conn, h[1], h[2]), "mt.header(" .. h[1] .. ")")
  end
  if not mt.test_option(conn, SMFIP_NOEOH) then ok(mt.eoh(conn), "mt.eoh") end
  if qid then ok(mt.macro(conn, string.byte("E"), "i", qid), "mt.macro(SMFIC_BODYEOB)") end
  ok(mt.eom(conn), "mt.eom")
  return mt.getreply(conn)
end

-- Every value of the header `name` the milter added or inserted at end of
-- message, in a list.
function added_headers(conn, name)
  local out = {}
  for n = 0, 50 do
    local v = mt.getheader(conn, name, n)
    if v == nil then break end
    out[#out + 1] = v
  end
  return out
end

-- Exactly one `name: value` inserted at index 0, and nothing appended.
function expect_one_header(conn, name, value)
  local vals = added_headers(conn, name)
  check(#vals == 1, string.format("expected exactly one %s header added, got %d: [%s]", name, #vals,
                                  table.concat(vals, ", ")))
  check(vals[1] == value, string.format("%s: expected value %q, got %q", name, value, vals[1]))
  check(mt.eom_check(conn, MT_HDRINSERT, name, value, 0),
        string.format("%s: %s was not inserted at index 0 (MT_HDRINSERT)", name, value))
  check(not mt.eom_check(conn, MT_HDRADD, name), name .. " appended (MT_HDRADD) instead of inserted at 0")
end

function expect_no_header(conn, name)
  local vals = added_headers(conn, name)
  check(#vals == 0, string.format("expected no %s header, got %d: [%s]", name, #vals, table.concat(vals, ", ")))
  check(not mt.eom_check(conn, MT_HDRINSERT), "some header was inserted (MT_HDRINSERT)")
  check(not mt.eom_check(conn, MT_HDRADD), "some header was added (MT_HDRADD)")
end

-- Deletions are SMFIR_CHGHEADER with an empty value; index 1..n.
function expect_deleted(conn, name, count)
  for i = 1, count do
    check(mt.eom_check(conn, MT_HDRDELETE, name, i),
          string.format("%s occurrence %d was not deleted (MT_HDRDELETE)", name, i))
  end
  check(not mt.eom_check(conn, MT_HDRDELETE, name, count + 1),
        string.format("%s occurrence %d deleted but only %d were sent", name, count + 1, count))
end

function expect_nothing_deleted(conn)
  check(not mt.eom_check(conn, MT_HDRDELETE), "a header was deleted (MT_HDRDELETE)")
  check(not mt.eom_check(conn, MT_HDRCHANGE), "a header was changed (MT_HDRCHANGE)")
end

-- One whole message on an open connection: MAIL, each RCPT, headers, end
-- of message; every step must be accepted. Check the header edits after.
-- opts: auth (SASL login), headers (list of {name, value}), qid.
function transaction(conn, from, rcpts, opts)
  opts = opts or {}
  local r = mail(conn, from, opts)
  check(r == SMFIR_CONTINUE, "MAIL FROM:<" .. from .. ">: expected SMFIR_CONTINUE, got " .. reply_name(r))
  for _, to in ipairs(rcpts) do
    r = rcpt(conn, to)
    check(r == SMFIR_CONTINUE, "RCPT TO:<" .. to .. ">: expected SMFIR_CONTINUE, got " .. reply_name(r))
  end
  r = message(conn, opts.headers, opts.qid)
  check(r == SMFIR_CONTINUE, "end of message: expected SMFIR_CONTINUE, got " .. reply_name(r))
end

-- A fresh connection (opts as for connect(), plus tls as for helo()), one
-- transaction, then check_fn(conn) to inspect the end-of-message edits,
-- then disconnect.
function one_message(opts, from, rcpts, check_fn)
  local conn = connect(opts)
  helo(conn, opts.tls)
  transaction(conn, from, rcpts, opts)
  if check_fn then check_fn(conn) end
  mt.disconnect(conn)
end

-- Daemon log access (the daemon logs to stderr with -f; run.sh captures it).
function read_log()
  local f = io.open(log, "r")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

function count_in_log(text)
  local s, n, pos = read_log(), 0, 1
  while true do
    local a, b = string.find(s, text, pos, true)
    if not a then return n end
    n, pos = n + 1, b + 1
  end
end

-- Waits until `text` occurs at least `count` times in the log.
function wait_log(text, count, seconds)
  count, seconds = count or 1, seconds or 10
  for _ = 1, seconds * 20 do
    if count_in_log(text) >= count then return end
    mt.sleep(0.05)
  end
  fail(string.format("daemon log: %q did not appear %d time(s) within %d s", text, count, seconds))
end

-- The daemon's open descriptors and threads (Linux /proc).
function daemon_fds()
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

function daemon_threads()
  local f = io.open("/proc/" .. pid .. "/status", "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("Threads:%s*(%d+)"))
end

function daemon_alive()
  local f = io.open("/proc/" .. pid .. "/status", "r")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return not s:match("State:%s*Z")
end

-- Copies src over the live config atomically (rename), as an admin's
-- editor or deploy tool would.
function install_config(src)
  local i, err = io.open(src, "r")
  check(i, "cannot read " .. src .. ": " .. tostring(err))
  local text = i:read("a")
  i:close()
  local tmp = conf .. ".tmp"
  local o, err2 = io.open(tmp, "w")
  check(o, "cannot write " .. tmp .. ": " .. tostring(err2))
  o:write(text)
  o:close()
  local renamed, err3 = os.rename(tmp, conf)
  check(renamed, "rename to " .. conf .. ": " .. tostring(err3))
end

function sighup()
  local okay = os.execute("kill -HUP " .. pid)
  check(okay, "kill -HUP " .. pid .. " failed")
end
