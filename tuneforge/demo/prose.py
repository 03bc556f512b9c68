"""General prose for a real model's forgetting probe: plain encyclopedic English, written for
this project (no third-party text), of the kind a pretrained model has read a great deal of.

A real model's general-text perplexity must be measured on text like its pretraining data.
The toy model's corpus (`corpus.paragraphs`) is built from a few templates: a fine-tune that
saw any of it would learn the templates, so it says little about what a real model forgot.
"""

from __future__ import annotations

PARAGRAPHS = [
    "Water moves through the environment in a continuous cycle. Heat from the sun evaporates "
    "water from oceans, lakes and rivers, and plants release water vapour through their "
    "leaves. As the vapour rises it cools and condenses into clouds, and when the droplets "
    "grow heavy enough they fall back to the ground as rain or snow.",
    "Photosynthesis is the process by which green plants make their own food. Using the energy "
    "of sunlight, they combine carbon dioxide from the air with water from the soil to produce "
    "sugars, and they release oxygen as a by-product. Almost all life on Earth depends, "
    "directly or indirectly, on this process.",
    "The printing press, developed in Europe in the fifteenth century, changed how knowledge "
    "spread. Books that had once been copied by hand could be produced in hundreds of copies, "
    "prices fell, and more people learned to read. Within a few decades printed books were "
    "common in most European cities.",
    "A healthy diet includes a variety of foods. Vegetables, fruit and whole grains provide "
    "fibre and vitamins, while beans, fish, eggs and meat supply protein. Doctors generally "
    "advise limiting sugar and salt, and drinking enough water throughout the day.",
    "The human heart is a muscular organ about the size of a fist. It pumps blood through a "
    "network of arteries and veins, delivering oxygen and nutrients to every part of the body. "
    "An adult heart beats roughly sixty to one hundred times a minute when the body is at rest.",
    "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Many of "
    "them lie along the edges of tectonic plates, where the crust is either pulling apart or "
    "being pushed beneath another plate. Eruptions can build mountains, create new islands and "
    "enrich the surrounding soil.",
    "Bees play an important role in agriculture. As they collect nectar and pollen from "
    "flowers, they carry pollen from one plant to another, which allows many crops to produce "
    "fruit and seeds. Farmers often keep hives near orchards for this reason.",
    "The Great Wall of China is a series of fortifications built over many centuries. Its "
    "purpose was to protect the northern borders of Chinese states from raids. The best-known "
    "sections, made of brick and stone, were built during the Ming dynasty.",
    "Learning a new language takes time and practice. Most learners start with common words "
    "and simple sentences, then build up grammar and vocabulary by reading, listening and "
    "speaking. Regular short sessions are usually more effective than occasional long ones.",
    "Electric current is the flow of electric charge through a conductor such as a copper "
    "wire. The voltage of a source pushes the charge along, and the resistance of the circuit "
    "limits how much current flows. Ohm's law states that the current equals the voltage "
    "divided by the resistance.",
    "The Moon orbits the Earth about once every twenty-seven days. Because we see different "
    "amounts of its sunlit side as it moves, its shape in the sky appears to change from a "
    "thin crescent to a full disc and back again. Its gravity also causes the tides in the "
    "oceans.",
    "Forests cover about a third of the land on Earth. They provide habitat for countless "
    "species of animals and plants, store large amounts of carbon, and help regulate the flow "
    "of water. Cutting them down faster than they can grow back threatens all of these "
    "benefits.",
    "A library lends books and other materials to the public, usually free of charge. Besides "
    "books, many libraries offer newspapers, films, computers and quiet places to study. "
    "Librarians help visitors find information and often organise reading groups for children "
    "and adults.",
    "Mathematics has been studied for thousands of years. Ancient civilisations used "
    "arithmetic to trade, measure land and predict the seasons, and Greek scholars developed "
    "geometry as a system of proofs. Today mathematics underlies science, engineering, "
    "economics and computing.",
    "Sleep is essential for good health. During sleep the body repairs tissues and the brain "
    "sorts and stores memories from the day. Most adults need between seven and nine hours a "
    "night, and a regular schedule makes it easier to fall asleep.",
    "Trains became a major form of transport in the nineteenth century. Steam locomotives "
    "could carry heavy goods and many passengers over long distances far faster than horses. "
    "Railways helped cities grow and connected markets across whole countries.",
    "Recycling turns used materials into new products. Paper, glass, metal and many plastics "
    "can be collected, sorted and processed again, which saves raw materials and energy and "
    "reduces the amount of waste sent to landfill.",
    "The ocean covers more than seventy percent of the Earth's surface. It absorbs heat from "
    "the sun and moves it around the planet through currents, which shapes the climate of the "
    "continents. It is also home to a great variety of life, much of it still unexplored.",
    "A good night's preparation makes exams less stressful. Students who review their notes "
    "over several weeks, test themselves with practice questions and rest well the night "
    "before usually perform better than those who try to learn everything at the last minute.",
    "Bread is one of the oldest prepared foods. It is made by mixing flour with water and "
    "usually yeast, kneading the dough, letting it rise and then baking it. Different grains, "
    "methods and ingredients give the many kinds of bread eaten around the world.",
    "Weather forecasts are based on measurements of temperature, pressure, humidity and wind "
    "taken all over the world. Computers use these measurements and the laws of physics to "
    "simulate how the atmosphere will change over the next hours and days.",
    "Music is found in every known human culture. People sing and play instruments to "
    "celebrate, to mourn, to work together and to tell stories. Rhythm, melody and harmony "
    "combine in countless ways across different traditions.",
    "Bicycles are an efficient way to travel short distances. They need no fuel, take little "
    "space to park and give the rider regular exercise. Many cities have built dedicated lanes "
    "to make cycling safer.",
    "Vaccines train the immune system to recognise a germ without causing the disease. When a "
    "vaccinated person later meets the real germ, the body can respond quickly and prevent a "
    "serious illness. Vaccination has greatly reduced diseases such as measles and polio.",
]


def prose(n: int) -> list[str]:
    """The first `n` paragraphs (all of them, at most)."""
    return PARAGRAPHS[:n]
