-- conf: outbound.conf
-- A message whose only header is a forged X-TLSLevel (and no body: the
-- milter negotiates the body away) gets its end-of-message reply at once,
-- with the forged header deleted. The read timeout is 2 s so a dropped
-- reply fails fast instead of after miltertest's default 10 s.
-- A message with NO header at all cannot be expressed here: miltertest's
-- mt.eom() sends a default header of its own when none was sent. That case
-- (DATA straight to end of message, which libmilter dropped unanswered
-- while SMFIP_NOEOH was negotiated) is check 6 of tests/e2e/t-milter.sh,
-- through a real Postfix.
dofile(lib)
mt.set_timeout(2)

step("outbound, the only header a forged X-TLSLevel: deleted, ours inserted")
one_message({ auth = "alice", headers = { { "X-TLSLevel", "Try" } } }, "alice@ourcorp.test", { "bob@enc.test" },
  function(c)
    expect_deleted(c, "X-TLSLevel", 1)
    expect_one_header(c, "X-TLSLevel", "Require")
  end)

step("inbound, the only header a forged X-TLSLevel: deleted, nothing inserted")
one_message({ headers = { { "X-TLSLevel", "Require" } } }, "stranger@example.test", { "alice@ourcorp.test" },
  function(c)
    expect_deleted(c, "X-TLSLevel", 1)
    expect_no_header(c, "X-TLSLevel")
  end)

step("two such messages on one connection: both answered")
local c = connect()
helo(c, nil)
transaction(c, "stranger@example.test", { "alice@ourcorp.test" }, { headers = { { "X-TLSLevel", "Try" } } })
expect_deleted(c, "X-TLSLevel", 1)
transaction(c, "stranger@example.test", { "alice@ourcorp.test" }, { headers = { { "X-TLSLevel", "Try" } } })
expect_deleted(c, "X-TLSLevel", 1)
mt.disconnect(c)
