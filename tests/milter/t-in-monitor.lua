-- action = "monitor": MAIL and RCPT that a reject rule would refuse are
-- accepted (SMFIR_CONTINUE); the daemon logs "would reject" at once and
-- again with the queue ID at end of message (t-in-monitor.log-expect).
dofile(lib)

step("a monitor-only policy: no reply asked at MAIL and RCPT (no rule can stop mail there), HELO skipped")
local n = connect({ ip = "198.51.100.61" })
check(mt.test_option(n, SMFIP_NR_MAIL), "SMFIP_NR_MAIL not negotiated")
check(mt.test_option(n, SMFIP_NR_RCPT), "SMFIP_NR_RCPT not negotiated")
check(mt.test_option(n, SMFIP_NOHELO), "SMFIP_NOHELO not negotiated")
mt.disconnect(n)

step("MAIL FROM:<x@watch.test>, RCPT TO:<audit@ourcorp.test> without TLS: accepted")
one_message({ ip = "198.51.100.60", qid = "4QTEST1" }, "x@watch.test", { "audit@ourcorp.test", "bob@ourcorp.test" },
  function(c)
    expect_no_header(c, "X-TLSLevel")
    expect_nothing_deleted(c)
  end)
