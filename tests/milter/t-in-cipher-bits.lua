-- min_cipher_bits = 112: a TLS session with 56-bit (or 111-bit) cipher is
-- rejected at MAIL; 112, 128 and 256 bits are accepted; no TLS at all is
-- rejected too.
dofile(lib)

step("no TLS: rejected")
local c0 = connect({ ip = "198.51.100.30" })
helo(c0, nil)
check(mail(c0, "sales@partner.test") == SMFIR_REPLYCODE, "no TLS: not rejected")
mt.disconnect(c0)

local cases = {
  { 56, SMFIR_REPLYCODE }, { 111, SMFIR_REPLYCODE },
  { 112, SMFIR_CONTINUE }, { 128, SMFIR_CONTINUE }, { 256, SMFIR_CONTINUE },
}
for _, case in ipairs(cases) do
  step(string.format("TLSv1.2 with %d bits: %s", case[1], reply_name(case[2])))
  local c = connect({ ip = "198.51.100.30" })
  helo(c, { version = "TLSv1.2", bits = case[1], cipher = "SOME-CIPHER" })
  local r = mail(c, "sales@partner.test")
  check(r == case[2], string.format("%d bits: expected %s, got %s", case[1], reply_name(case[2]), reply_name(r)))
  mt.disconnect(c)
end
