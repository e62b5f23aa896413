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
