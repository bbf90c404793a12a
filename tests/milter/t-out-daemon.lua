-- conf: outbound.conf
-- {daemon_name} at SMFIC_CONNECT (Postfix: the master.cf service name)
-- listed in milter.outbound_daemons ("submission") makes the connection
-- outbound without authentication; another service name does not.
dofile(lib)

step("daemon_name submission, encrypt recipient: Require")
one_message({ daemon_name = "submission" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("daemon_name submission, may recipient: Try")
one_message({ daemon_name = "submission" }, "app@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Try")
end)

step("daemon_name smtpd (not listed): inbound, no header")
one_message({ daemon_name = "smtpd" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("no daemon_name: inbound, no header")
one_message({}, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)
