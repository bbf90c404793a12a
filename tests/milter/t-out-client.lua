-- conf: outbound.conf
-- A client address inside milter.outbound_clients (10.0.0.0/8,
-- 2001:db8:99::/48) is outbound without authenticating; one outside them
-- is inbound (no header). An IPv4-mapped IPv6 address is the IPv4 client.
dofile(lib)

step("10.1.2.3 (listed), encrypt recipient: Require")
one_message({ ip = "10.1.2.3" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("10.255.255.254 (listed, edge of the /8), may recipient: Try")
one_message({ ip = "10.255.255.254" }, "app@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Try")
end)

step("11.0.0.1 (not listed): inbound, no header")
one_message({ ip = "11.0.0.1" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("9.255.255.255 (not listed): inbound, no header")
one_message({ ip = "9.255.255.255" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("2001:db8:99::7 (listed IPv6): Require")
one_message({ ip = "2001:db8:99::7" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("2001:db8:98::7 (not listed): no header")
one_message({ ip = "2001:db8:98::7" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("::ffff:10.1.2.3 (IPv4-mapped, listed): Require")
one_message({ ip = "::ffff:10.1.2.3" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("::ffff:11.0.0.1 (IPv4-mapped, not listed): no header")
one_message({ ip = "::ffff:11.0.0.1" }, "app@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)
