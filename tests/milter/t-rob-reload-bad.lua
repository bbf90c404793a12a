-- conf: t-rob-reload.conf
-- extra-conf: t-rob-reload-bad.broken.conf
-- extra-conf: t-rob-reload.next.conf
-- A reload of a broken policy file fails and changes nothing: the milter
-- keeps serving the previous policy on open and new connections. Fixing
-- the file and reloading again then applies the new rules.
dofile(lib)

local a = connect({ ip = "203.0.113.40" })
helo(a, nil)
transaction(a, "x@late.test", { "bob@ourcorp.test" })

step("install a broken policy, SIGHUP: the reload fails")
install_config(dir .. "/t-rob-reload-bad.broken.conf")
sighup()
wait_log("still serving the previous policy", 1)
check(daemon_alive(), "the daemon died on a broken reload")

step("previous policy still served on the open connection")
transaction(a, "x@late.test", { "bob@ourcorp.test" })
check(mail(a, "y@partner.test") == SMFIR_REPLYCODE, "partner sender not rejected after the failed reload")
transaction(a, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(a, "X-TLSLevel", "Try")

step("and on a new connection")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Try")
end)

step("fixed policy, SIGHUP: the new rules apply on the open connection")
install_config(dir .. "/t-rob-reload.next.conf")
sighup()
wait_log("3 inbound rules", 1)
check(mail(a, "x@late.test", { auth_sent = true }) == SMFIR_REPLYCODE, "late.test sender not rejected after the fix")
mt.disconnect(a)
