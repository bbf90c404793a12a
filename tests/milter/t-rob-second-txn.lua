-- conf: outbound.conf
-- Several transactions on one connection: each starts clean. The level,
-- the forged-header count, the sender and the outbound decision of one
-- message do not leak into the next.
dofile(lib)

local c = connect({ ip = "203.0.113.9" })
helo(c, nil)

step("1: unauthenticated (inbound) MAIL FROM partner without TLS: rejected")
check(mail(c, "x@partner.test") == SMFIR_REPLYCODE, "partner sender not rejected")

step("2: AUTH, encrypt recipient, two forged headers: Require, 2 deleted")
transaction(c, "alice@ourcorp.test", { "bob@enc.test" },
  { auth = "alice", headers = { { "X-TLSLevel", "Try" }, { "x-tlslevel", "Try" } } })
expect_deleted(c, "X-TLSLevel", 2)
expect_one_header(c, "X-TLSLevel", "Require")

step("3: may recipient, no forged header: Try, nothing deleted")
transaction(c, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(c, "X-TLSLevel", "Try")
expect_nothing_deleted(c)

step("4: sender rule (finance@): Require")
transaction(c, "finance@ourcorp.test", { "bob@nowhere.test" }, { auth = "alice" })
expect_one_header(c, "X-TLSLevel", "Require")

step("5: other sender, no rule: no header (sender rule does not stick)")
transaction(c, "alice@ourcorp.test", { "bob@nowhere.test" }, { auth = "alice" })
expect_no_header(c, "X-TLSLevel")
expect_nothing_deleted(c)

step("6: MAIL macros without {auth_authen}: inbound again, no header")
transaction(c, "alice@ourcorp.test", { "bob@enc.test" }, { auth_sent = true })
expect_no_header(c, "X-TLSLevel")
mt.disconnect(c)
