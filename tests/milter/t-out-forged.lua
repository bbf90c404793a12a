-- conf: outbound.conf
-- Every X-TLSLevel header the client sent, in any case and however many,
-- is deleted (MT_HDRDELETE, occurrences 1..n) and ours is inserted at 0, so
-- a client cannot downgrade Require with its own "X-TLSLevel: Try" first.
-- A look-alike name (X-TLSLevel-Note) is left alone.
dofile(lib)

step("outbound: client puts X-TLSLevel: Try above a Require message")
one_message({ auth = "mallory", headers = { { "X-TLSLevel", "Try" }, { "Subject", "downgrade" } } },
  "mallory@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_deleted(c, "X-TLSLevel", 1)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("outbound: three forged headers in mixed case, one look-alike")
one_message({ auth = "mallory", headers = {
    { "x-tlslevel", "Try" }, { "Subject", "many" }, { "X-TLSLEVEL", "none" },
    { "X-TLSLevel-Note", "keep me" }, { "X-TlsLevel", "Try" } } },
  "mallory@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_deleted(c, "X-TLSLevel", 3)
  check(not mt.eom_check(c, MT_HDRDELETE, "X-TLSLevel-Note"), "X-TLSLevel-Note was deleted")
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("outbound, level none: the forged X-TLSLevel: Require is deleted, nothing inserted")
one_message({ auth = "mallory", headers = { { "X-TLSLevel", "Require" } } },
  "mallory@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_deleted(c, "X-TLSLevel", 1)
  expect_no_header(c, "X-TLSLevel")
end)

step("outbound, may: forged Require deleted, Try inserted")
one_message({ auth = "mallory", headers = { { "X-TLSLevel", "Require" } } },
  "mallory@ourcorp.test", { "bob@may.test" }, function(c)
  expect_deleted(c, "X-TLSLevel", 1)
  expect_one_header(c, "X-TLSLevel", "Try")
end)

step("inbound: an X-TLSLevel from outside is deleted too, nothing inserted")
one_message({ headers = { { "X-TLSLevel", "Try" }, { "x-tlslevel", "Require" } } },
  "stranger@example.test", { "alice@ourcorp.test" }, function(c)
  expect_deleted(c, "X-TLSLevel", 2)
  expect_no_header(c, "X-TLSLevel")
end)
