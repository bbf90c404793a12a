-- conf: outbound.conf
-- A sender rule (outbound `from = [ "finance@ourcorp.test" ]`, encrypt)
-- makes the message Require whatever the recipients' levels.
dofile(lib)

step("finance@ to a recipient with no rule: Require")
one_message({ auth = "finance" }, "finance@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("finance@ to a may recipient: Require")
one_message({ auth = "finance" }, "finance@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("Finance+q3@OurCorp.test (extension, case): Require")
one_message({ auth = "finance" }, "Finance+q3@OurCorp.test", { "bob@nowhere.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("another sender, same recipient: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("finance@ from an inbound client: no header (sender rules are outbound only)")
one_message({}, "finance@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)
