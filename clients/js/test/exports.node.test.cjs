// The CommonJS build, as a `require` user gets it: the same API as the ES module.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const sdk = require("tidings-client");

test("require('tidings-client') gives the API", async () => {
  for (const name of ["connect", "TidingsClient", "Subscription", "TidingsError", "memoryStorage", "localStorageStorage", "fileStorage"]) {
    assert.equal(typeof sdk[name], "function", name);
  }
  const s = sdk.memoryStorage();
  await s.set("k", "v");
  assert.equal(await s.get("k"), "v");
  const e = new sdk.TidingsError("FORBIDDEN", "no", { trackingId: "t" });
  assert.ok(e instanceof Error);
  assert.equal(e.code, "FORBIDDEN");
  assert.equal(e.trackingId, "t");
  assert.throws(() => sdk.localStorageStorage(), TypeError, "no localStorage in Node");
});
