-- conf: in-sender.conf
-- The same partner sender over TLS ({tls_version}=TLSv1.3,
-- {cipher_bits}=256 with HELO, as Postfix sends them after STARTTLS) is
-- accepted at MAIL and RCPT, and the message passes with no edits.
dofile(lib)

step("TLSv1.3/256, MAIL FROM:<sales@partner.test>: accepted")
local c = connect({ ip = "198.51.100.20" })
helo(c, { version = "TLSv1.3", bits = 256 })
transaction(c, "sales@partner.test", { "alice@ourcorp.test", "bob@ourcorp.test" })
expect_no_header(c, "X-TLSLevel")
expect_nothing_deleted(c)

step("same TLS connection, second message: accepted")
transaction(c, "billing@partner.test", { "alice@ourcorp.test" })
mt.disconnect(c)
