-- conf: outbound.conf
-- An abort mid-transaction (RSET, a dropped DATA) forgets the transaction:
-- the next one on the same connection starts clean.
dofile(lib)

local c = connect({ ip = "203.0.113.10" })
helo(c, nil)

step("AUTH, encrypt recipient, forged header, abort after the headers")
check(mail(c, "alice@ourcorp.test", { auth = "alice" }) == SMFIR_CONTINUE, "MAIL")
check(rcpt(c, "bob@enc.test") == SMFIR_CONTINUE, "RCPT")
check(mt.data(c) == nil, "mt.data")
check(mt.header(c, "X-TLSLevel", "Try") == nil, "mt.header")
check(mt.abort(c) == nil, "mt.abort")

step("next transaction, may recipient: Try, nothing deleted")
transaction(c, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(c, "X-TLSLevel", "Try")
expect_nothing_deleted(c)

step("sender rule transaction aborted after RCPT; next one from another sender: no header")
check(mail(c, "finance@ourcorp.test", { auth = "alice" }) == SMFIR_CONTINUE, "MAIL")
check(rcpt(c, "bob@nowhere.test") == SMFIR_CONTINUE, "RCPT")
check(mt.abort(c) == nil, "mt.abort")
transaction(c, "alice@ourcorp.test", { "bob@nowhere.test" }, { auth = "alice" })
expect_no_header(c, "X-TLSLevel")

step("inbound: partner rejected, abort, another sender's message passes untouched")
check(mail(c, "x@partner.test", { auth_sent = true }) == SMFIR_REPLYCODE, "partner sender not rejected")
check(mt.abort(c) == nil, "mt.abort")
transaction(c, "y@other.test", { "alice@ourcorp.test" })
expect_no_header(c, "X-TLSLevel")
expect_nothing_deleted(c)

step("abort right after MAIL, then a full outbound message: Require")
check(mail(c, "alice@ourcorp.test", { auth = "alice" }) == SMFIR_CONTINUE, "MAIL")
check(mt.abort(c) == nil, "mt.abort")
transaction(c, "alice@ourcorp.test", { "bob@enc.test" }, { auth = "alice" })
expect_one_header(c, "X-TLSLevel", "Require")
mt.disconnect(c)
