// Small touches that show the script was fetched and ran.
document.addEventListener("DOMContentLoaded", () => {
  const year = document.getElementById("year");
  if (year) year.textContent = String(new Date().getFullYear());

  const status = document.getElementById("page-status");
  if (status && window.performance) {
    const assets = performance.getEntriesByType("resource").length;
    status.textContent =
      `The stylesheet, this script and both images (${assets} requests after ` +
      `the page itself) came from the same sandboxed guest.`;
    status.dataset.scriptRan = "yes";
  }
});

// For the browser check: the protocol the page came over (h2 over HTTPS,
// http/1.1 in cleartext) and whether the logo arrived.
window.addEventListener("load", () => {
  const status = document.getElementById("page-status");
  if (!status || !window.performance) return;
  const [navigation] = performance.getEntriesByType("navigation");
  if (navigation) status.dataset.protocol = navigation.nextHopProtocol;
  const logo = document.querySelector(".brand img");
  if (logo) status.dataset.logo = logo.complete && logo.naturalWidth > 0 ? "loaded" : "missing";
});
