// Adds the studio's API key to the page's own requests that cannot carry a header: <video> byte ranges,
// <img> thumbnails, download links. The page keeps the key in Cache Storage, which this worker can read.
const PREFIX = self.location.pathname.replace(/\/studio\/sw\.js$/, "");  // the app's route prefix, if any
const KEY_CACHE = "wan-studio";
const KEY_URL = `${PREFIX}/studio/key`;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function withKey(request) {
  const stored = await (await caches.open(KEY_CACHE)).match(KEY_URL);
  const key = stored ? await stored.text() : "";
  if (!key) return fetch(request);
  const headers = new Headers(request.headers);
  headers.set("Authorization", `Bearer ${key}`);
  return fetch(new Request(request, { headers, mode: "same-origin" }));
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin === self.location.origin && url.pathname.startsWith(`${PREFIX}/v1/`)
      && !event.request.headers.has("Authorization")) {
    event.respondWith(withKey(event.request));
  }
});
