-- tests/abuse/tsan-milter.lua: milter sessions for t_tsan.sh, run by
-- miltertest several times in parallel while socketmap clients and reloads
-- hit the same daemon. Uses tests/milter/lib.lua (globals sock, dir, conf,
-- log, pid, lib as there) plus:
--   secs   how long to keep going (seconds)
--   id     this client's number (varies addresses, spreads the patterns)
-- The "flip" rule's level alternates between encrypt and may while this
-- runs, so mail to flip.test only may get Require or Try; everything else
-- has one right answer. Prints "milter client ID: N transactions ..." last.
dofile(lib)

local secs = tonumber(secs or "20")
local id = tonumber(id or "1")
local stop_at = os.time() + secs
local n_tx, n_conn, n_reject, n_abort = 0, 0, 0, 0

local function header_in(c, allowed)
  local vals = added_headers(c, "X-TLSLevel")
  check(#vals == 1, string.format("expected one X-TLSLevel header, got %d", #vals))
  for _, a in ipairs(allowed) do
    if vals[1] == a then return end
  end
  fail(string.format("X-TLSLevel: %q is none of %s", vals[1], table.concat(allowed, "/")))
end

local round = 0
while os.time() < stop_at do
  round = round + 1
  step(string.format("client %d round %d", id, round))
  -- Outbound (client 10.x is in outbound_clients): two transactions on one connection.
  local a = connect({ ip = string.format("10.%d.%d.7", id, round % 250) })
  n_conn = n_conn + 1
  helo(a, nil)
  transaction(a, string.format("u%d@ourcorp.test", id), { "bob@enc.test", "x@flip.test" })
  header_in(a, { "Require" })
  n_tx = n_tx + 1
  transaction(a, string.format("u%d@ourcorp.test", id), { "y@flip.test" })
  header_in(a, { "Require", "Try" })
  n_tx = n_tx + 1

  -- A second connection open at the same time: inbound partner without TLS
  -- is rejected, with TLS it passes; an aborted transaction in between.
  local b = connect({ ip = "198.51.100." .. tostring(id) })
  n_conn = n_conn + 1
  helo(b, nil)
  check(mail(b, "sales@partner.test") == SMFIR_REPLYCODE, "partner sender without TLS not rejected")
  n_reject = n_reject + 1
  check(mail(b, "someone@other.test") == SMFIR_CONTINUE, "other sender not accepted")
  check(rcpt(b, "alice@ourcorp.test") == SMFIR_CONTINUE, "rcpt not accepted")
  check(mt.abort(b) == nil, "mt.abort")
  n_abort = n_abort + 1
  transaction(a, "auditor-sender@ourcorp.test", { "auditor@lawfirm.test" })
  header_in(a, { "Require" })
  n_tx = n_tx + 1
  mt.disconnect(b)

  -- A client that vanishes mid-message (no QUIT, no abort).
  if round % 3 == 0 then
    local v = connect({ ip = "10.200.0." .. tostring(id) })
    n_conn = n_conn + 1
    helo(v, nil)
    check(mail(v, "z@ourcorp.test") == SMFIR_CONTINUE, "MAIL")
    check(rcpt(v, "q@flip.test") == SMFIR_CONTINUE, "RCPT")
    mt.disconnect(v, false)
  end
  mt.disconnect(a)
end
mt.echo(string.format("milter client %d: %d transactions, %d connections, %d rejects, %d aborts",
                      id, n_tx, n_conn, n_reject, n_abort))
