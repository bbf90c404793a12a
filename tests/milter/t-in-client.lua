-- clients = [ "192.0.2.0/24" ], min_protocol = "TLSv1.2": a client in the
-- range is rejected at MAIL without TLS or with TLSv1/TLSv1.1, whatever the
-- sender (the null sender too); TLSv1.2 and TLSv1.3 pass; other clients pass.
-- An IPv4-mapped IPv6 address (::ffff:192.0.2.77) is the IPv4 client.
dofile(lib)

local cases = {
  { "192.0.2.9", nil, "a@example.test", SMFIR_REPLYCODE, "no TLS" },
  { "192.0.2.9", nil, "", SMFIR_REPLYCODE, "no TLS, null sender" },
  { "192.0.2.255", { version = "TLSv1", bits = 256 }, "a@example.test", SMFIR_REPLYCODE, "TLSv1" },
  { "192.0.2.9", { version = "TLSv1.1", bits = 256 }, "a@example.test", SMFIR_REPLYCODE, "TLSv1.1" },
  { "192.0.2.9", { version = "TLSv1.2", bits = 256 }, "a@example.test", SMFIR_CONTINUE, "TLSv1.2" },
  { "192.0.2.0", { version = "TLSv1.3", bits = 256 }, "a@example.test", SMFIR_CONTINUE, "TLSv1.3" },
  { "198.51.100.1", nil, "a@example.test", SMFIR_CONTINUE, "other client, no TLS" },
  { "192.0.3.1", nil, "a@example.test", SMFIR_CONTINUE, "just outside the /24, no TLS" },
  -- an IPv4 client as an IPv6 socket reports it (IPv4-mapped) is that
  -- IPv4 address to the rules
  { "::ffff:192.0.2.77", nil, "a@example.test", SMFIR_REPLYCODE, "IPv4-mapped, no TLS" },
  { "::ffff:192.0.2.77", { version = "TLSv1.3", bits = 256 }, "a@example.test", SMFIR_CONTINUE,
    "IPv4-mapped, TLSv1.3" },
  { "::ffff:192.0.3.1", nil, "a@example.test", SMFIR_CONTINUE, "IPv4-mapped outside the /24, no TLS" },
  { "::192.0.2.77", nil, "a@example.test", SMFIR_CONTINUE, "IPv4-compatible (not mapped) is IPv6, no TLS" },
  -- no address at all (a unix-socket or unknown-family client): no client
  -- rule can match; the milter must not trip over it
  { "unspec", nil, "a@example.test", SMFIR_CONTINUE, "unknown address family" },
}
for _, k in ipairs(cases) do
  step(string.format("%s, %s: %s", k[1], k[5], reply_name(k[4])))
  local c = connect({ ip = k[1] })
  helo(c, k[2])
  local r = mail(c, k[3])
  check(r == k[4], string.format("expected %s, got %s", reply_name(k[4]), reply_name(r)))
  mt.disconnect(c)
end
