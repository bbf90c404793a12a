-- conf: outbound.conf
-- Many connections: 50 one after another (outbound Require and Try,
-- inbound rejected and accepted, and clients dropping the connection
-- mid-message), then 20 open at once with interleaved transactions. Every
-- answer stays right, and afterwards the daemon is back to the descriptors
-- and threads it had before (no leak per connection).
dofile(lib)

local fds0, threads0 = daemon_fds(), daemon_threads()
mt.echo(string.format("before: %d fds, %d threads", fds0, threads0))

step("50 connections, one after another")
for i = 1, 50 do
  local kind = i % 5
  if kind == 0 then
    one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
      expect_one_header(c, "X-TLSLevel", "Require")
    end)
  elseif kind == 1 then
    one_message({ ip = "10.9.8.7" }, "app@ourcorp.test", { "bob@may.test" }, function(c)
      expect_one_header(c, "X-TLSLevel", "Try")
    end)
  elseif kind == 2 then
    local c = connect({})
    helo(c, nil)
    local r = mail(c, "x@partner.test")
    check(r == SMFIR_REPLYCODE, string.format("connection %d: partner sender: expected SMFIR_REPLYCODE, got %s",
                                              i, reply_name(r)))
    mt.disconnect(c)
  elseif kind == 3 then
    -- the client vanishes in the middle of the headers: no QUIT, no abort
    local c = connect({ auth = "alice" })
    helo(c, nil)
    check(mail(c, "alice@ourcorp.test", { auth = "alice" }) == SMFIR_CONTINUE, "MAIL")
    check(rcpt(c, "bob@enc.test") == SMFIR_CONTINUE, "RCPT")
    check(mt.data(c) == nil, "mt.data")
    check(mt.header(c, "Subject", "cut off") == nil, "mt.header")
    mt.disconnect(c, false)
  else
    one_message({ tls = { version = "TLSv1.3", bits = 256 } }, "x@partner.test", { "alice@ourcorp.test" },
      function(c) expect_no_header(c, "X-TLSLevel") end)
  end
end

step("20 connections open at once, transactions interleaved")
local conns = {}
for i = 1, 20 do
  conns[i] = connect({})
  helo(conns[i], nil)
end
for i, c in ipairs(conns) do
  check(mail(c, "u" .. i .. "@ourcorp.test", { auth = "u" .. i }) == SMFIR_CONTINUE, "MAIL on connection " .. i)
end
for i, c in ipairs(conns) do
  local to = (i % 2 == 0) and "bob@enc.test" or "bob@may.test"
  check(rcpt(c, to) == SMFIR_CONTINUE, "RCPT on connection " .. i)
end
for i, c in ipairs(conns) do
  check(message(c) == SMFIR_CONTINUE, "end of message on connection " .. i)
  expect_one_header(c, "X-TLSLevel", (i % 2 == 0) and "Require" or "Try")
end
for _, c in ipairs(conns) do mt.disconnect(c) end

step("the daemon is back to its idle descriptors and threads")
local fds, threads
for _ = 1, 60 do
  fds, threads = daemon_fds(), daemon_threads()
  if fds <= fds0 and threads <= threads0 then break end
  mt.sleep(0.05)
end
mt.echo(string.format("after: %d fds, %d threads", fds, threads))
check(daemon_alive(), "the daemon is gone")
check(fds <= fds0, string.format("descriptors: %d before, %d after 70 connections", fds0, fds))
check(threads <= threads0, string.format("threads: %d before, %d after 70 connections", threads0, threads))

step("and still answers")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)
