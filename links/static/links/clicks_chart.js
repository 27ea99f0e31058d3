// Draws the link page's click charts (links/templates/admin/links/link/change_form.html):
// stacked bars, one colour per replica, from the JSON the page embeds. Chart.js is vendored
// (static/links/vendor/chartjs), so the admin needs no network beyond the master itself.
"use strict";
(function () {
  const palette = ["#417690", "#e08e0b", "#5b9e4d", "#b04a5a", "#7d62a8", "#3aa0a8", "#8c6d31"];

  function draw(canvasId, dataId) {
    const canvas = document.getElementById(canvasId);
    const source = document.getElementById(dataId);
    if (!canvas || !source || typeof Chart === "undefined") return;
    const data = JSON.parse(source.textContent);
    const datasets = data.series.map(function (s, i) {
      return { label: s.node, data: s.clicks, backgroundColor: palette[i % palette.length],
               borderWidth: 0 };
    });
    const chart = new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: {
          x: { stacked: true, ticks: { autoSkip: true, maxTicksLimit: 14, maxRotation: 0 } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
    // For the browser test and curious operators: what was drawn.
    canvas.dataset.points = String(datasets.reduce(function (n, d) {
      return n + d.data.reduce(function (a, b) { return a + b; }, 0);
    }, 0));
    canvas.dataset.drawn = chart ? "true" : "false";
  }

  function init() {
    draw("clicks-hourly", "clicks-hourly-data");
    draw("clicks-daily", "clicks-daily-data");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
