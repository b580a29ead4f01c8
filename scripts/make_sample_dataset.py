"""Build data/sample/rerank_sample.jsonl: 30 queries x 20 candidates, graded 0-2.

All text is written for this repository. Per topic: a query, two documents that answer
it (label 2) and two that are on topic but do not answer it (label 1). Each query's 20
candidates are its four, a near-duplicate of one answer (label 2), one long document
with the answer buried inside (label 2), and 14 documents of other topics (label 0).
Deterministic: run it again and the file is identical.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (query, [answers], [on-topic, not answering])
TOPICS: list[tuple[str, list[str], list[str]]] = [
    (
        "how long should I boil an egg for a soft yolk",
        [
            "For a soft, runny yolk, lower the egg into boiling water and cook it for six to seven minutes, then cool it in cold water.",
            "Six minutes in rolling boiling water gives a set white and a liquid yolk; add a minute for a jammy centre.",
        ],
        [
            "Eggs from free-range hens often have darker yolks because of the hens' varied diet.",
            "Storing eggs in the fridge door exposes them to temperature swings every time it opens.",
        ],
    ),
    (
        "what causes the seasons on Earth",
        [
            "Seasons happen because Earth's axis is tilted about 23.4 degrees, so each hemisphere gets more direct sunlight for part of the year.",
            "The tilt of the planet's axis, not its distance from the Sun, changes how high the Sun climbs and how long days last, which makes summer and winter.",
        ],
        [
            "Earth is actually closest to the Sun in early January, during the northern winter.",
            "Many cultures mark the solstices with festivals that celebrate the longest and shortest days.",
        ],
    ),
    (
        "python remove duplicates from list keep order",
        [
            "Use list(dict.fromkeys(items)) to drop duplicates while keeping the first occurrence order, since dicts preserve insertion order.",
            "A loop with a seen set keeps order: append an item only when it is not yet in the set, then add it to the set.",
        ],
        [
            "Python lists can hold items of different types, including other lists.",
            "Converting a list to a set is fast, but sets are unordered collections of unique items.",
        ],
    ),
    (
        "symptoms of iron deficiency",
        [
            "Iron deficiency commonly causes tiredness, pale skin, shortness of breath on exertion, cold hands and brittle nails.",
            "People low in iron may notice fatigue, headaches, a fast heartbeat and unusual cravings for ice or clay.",
        ],
        [
            "Red meat, lentils and spinach are common dietary sources of iron.",
            "Blood donors are screened for haemoglobin levels before every donation.",
        ],
    ),
    (
        "how does a heat pump heat a house",
        [
            "A heat pump moves heat rather than making it: a refrigerant absorbs warmth from outside air or ground, is compressed to raise its temperature, and releases the heat indoors.",
            "In heating mode the unit runs a refrigeration cycle in reverse, pulling low-grade heat from outdoors and delivering it to radiators or air ducts.",
        ],
        [
            "Heat pumps are often installed with extra insulation to cut running costs.",
            "Some governments offer grants toward the purchase of low-carbon heating systems.",
        ],
    ),
    (
        "best time to plant tulip bulbs",
        [
            "Plant tulip bulbs in autumn, about six to eight weeks before the ground freezes, so roots form before winter.",
            "Tulips need a cold period: set the bulbs in the soil in October or November in temperate climates for spring flowers.",
        ],
        [
            "Tulips were a luxury good in the Dutch Republic during the seventeenth century.",
            "Tulip petals come in almost every colour except true blue.",
        ],
    ),
    (
        "what is the difference between a virus and a bacterium",
        [
            "Bacteria are living single cells that can reproduce on their own, while viruses are much smaller particles that must infect a host cell to copy themselves.",
            "Antibiotics can kill bacteria but do nothing against viruses, because viruses lack the cell machinery those drugs target.",
        ],
        [
            "Washing hands with soap removes many germs from the skin.",
            "Some bacteria in the gut help digest fibre and produce vitamins.",
        ],
    ),
    (
        "how to change a flat bicycle tyre",
        [
            "Remove the wheel, lever one side of the tyre off the rim, pull out the inner tube, find the puncture, then fit a new or patched tube and reinflate.",
            "To fix a flat, deflate fully, use tyre levers to free the bead, swap the tube, check the tyre for thorns, and pump to the pressure printed on the sidewall.",
        ],
        [
            "Tubeless tyres use sealant that plugs small holes as you ride.",
            "Road bike tyres are usually narrower and run at higher pressures than mountain bike tyres.",
        ],
    ),
    (
        "why is the sky blue",
        [
            "Sunlight scatters off air molecules, and shorter blue wavelengths scatter much more than red ones, so blue light reaches our eyes from every direction.",
            "Rayleigh scattering makes the daytime sky blue: the amount of scattering grows sharply as wavelength gets shorter.",
        ],
        [
            "Sunsets look orange and red on many evenings, especially after dusty days.",
            "The sky on Mars often appears butterscotch coloured in rover photographs.",
        ],
    ),
    (
        "how many hours of sleep do teenagers need",
        [
            "Teenagers aged 13 to 18 need about eight to ten hours of sleep each night according to sleep medicine guidelines.",
            "Most adolescents function best with roughly nine hours of sleep, more than adults typically need.",
        ],
        [
            "Screens in the bedroom are a common reason teenagers go to bed late.",
            "Some schools have moved start times later in the morning.",
        ],
    ),
    (
        "what does a central bank do when it raises interest rates",
        [
            "By raising its policy rate, a central bank makes borrowing more expensive, which slows spending and investment and helps bring inflation down.",
            "Higher central bank rates feed through to mortgages and loans, cooling demand in the economy to reduce price growth.",
        ],
        [
            "Central banks also print banknotes and supervise commercial banks.",
            "Inflation is measured with a price index of a typical basket of goods.",
        ],
    ),
    (
        "how to make sourdough starter",
        [
            "Mix equal weights of flour and water in a jar, then discard half and feed it fresh flour and water every day for about a week until it bubbles and rises predictably.",
            "A sourdough starter is flour and water left to ferment; daily feedings let wild yeast and lactic bacteria multiply until it doubles within hours.",
        ],
        [
            "Sourdough bread usually has a chewy crust and an open crumb.",
            "Rye flour gives bread a denser texture and a darker colour.",
        ],
    ),
    (
        "git undo last commit but keep changes",
        [
            "Run git reset --soft HEAD~1 to remove the last commit while keeping its changes staged in the index.",
            "git reset HEAD~1 (mixed) drops the commit and leaves the changes in your working tree, unstaged.",
        ],
        [
            "Git stores each commit as a snapshot that points to its parent commit.",
            "A pull request lets teammates review commits before they are merged.",
        ],
    ),
    (
        "what is the boiling point of water at high altitude",
        [
            "At higher altitude the air pressure is lower, so water boils below 100 degrees Celsius; at 3,000 metres it boils at about 90 degrees.",
            "Water's boiling point drops roughly one degree Celsius for every 300 metres of elevation gained.",
        ],
        [
            "Mountaineers carry stoves that burn gas or liquid fuel.",
            "Pressure cookers are common in kitchens around the world.",
        ],
    ),
    (
        "how to reduce cat hairballs",
        [
            "Brush your cat regularly and feed a high-fibre hairball formula so swallowed fur passes through the gut instead of being coughed up.",
            "Daily grooming removes loose hair before the cat can swallow it, which is the most effective way to cut hairballs.",
        ],
        [
            "Cats spend a large share of their waking hours grooming themselves.",
            "Long-haired breeds such as Persians need more coat care than short-haired cats.",
        ],
    ),
    (
        "who wrote the theory of general relativity",
        [
            "Albert Einstein published the general theory of relativity in 1915, describing gravity as the curvature of spacetime.",
            "General relativity was developed by Einstein between 1907 and 1915 and presented to the Prussian Academy in November 1915.",
        ],
        [
            "Relativity predicts that clocks run slightly slower in stronger gravity, which GPS satellites must correct for.",
            "Einstein received the Nobel Prize for his explanation of the photoelectric effect.",
        ],
    ),
    (
        "how to lower blood pressure without medication",
        [
            "Cutting salt, losing excess weight, exercising most days, limiting alcohol and eating more vegetables can lower blood pressure noticeably.",
            "Regular aerobic exercise and a diet rich in fruit, vegetables and low-fat dairy reduce systolic pressure by several points.",
        ],
        [
            "Blood pressure is written as two numbers, systolic over diastolic.",
            "Home blood pressure monitors should be checked against a clinic reading.",
        ],
    ),
    (
        "what is a solid state drive",
        [
            "A solid state drive stores data in flash memory chips with no moving parts, making it much faster and more robust than a spinning hard disk.",
            "SSDs keep data in NAND flash cells and read it electronically, so access times are far shorter than on mechanical drives.",
        ],
        [
            "Hard disk drives are still common where large cheap capacity matters.",
            "Computers use RAM as fast temporary memory that is cleared when power is off.",
        ],
    ),
    (
        "how do vaccines work",
        [
            "A vaccine shows the immune system a harmless piece or weakened form of a germ, so it makes antibodies and memory cells that respond fast to the real infection.",
            "Vaccination trains immune memory: later exposure to the pathogen triggers a quick, strong defence before illness takes hold.",
        ],
        [
            "Some vaccines need to be stored in freezers during transport.",
            "Smallpox was declared eradicated in 1980.",
        ],
    ),
    (
        "how to remove red wine stain from carpet",
        [
            "Blot the stain right away, then apply cold water and a mix of dish soap and white vinegar, blotting from the outside in until the colour lifts.",
            "Cover a fresh red wine spill with salt or baking soda to draw out the liquid, then vacuum and treat the rest with cold water and mild detergent.",
        ],
        [
            "Wool carpets are more resistant to crushing than many synthetic ones.",
            "Red wine gets its colour from compounds in grape skins.",
        ],
    ),
    (
        "what is the capital of Australia",
        [
            "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne.",
            "Australia's federal parliament sits in Canberra, the national capital in the Australian Capital Territory.",
        ],
        [
            "Sydney is the largest city in Australia by population.",
            "Australia is both a country and a continent.",
        ],
    ),
    (
        "how to train a puppy to stop biting",
        [
            "When a puppy bites, say a short 'ouch', stop play for a moment and offer a chew toy instead, rewarding gentle mouthing.",
            "Redirect nipping to toys and end the game whenever teeth touch skin, so the puppy learns that biting stops the fun.",
        ],
        [
            "Puppies lose their milk teeth at around four to six months of age.",
            "Socialising a young dog with other dogs helps it read body language.",
        ],
    ),
    (
        "difference between weather and climate",
        [
            "Weather is the state of the atmosphere over hours or days, while climate is the average pattern of weather in a place over decades.",
            "Climate describes long-term averages such as typical rainfall and temperature; weather is what happens on a given day.",
        ],
        [
            "Weather forecasts use computer models of the atmosphere.",
            "Ice cores record past temperatures in bubbles of trapped air.",
        ],
    ),
    (
        "how does compound interest work",
        [
            "Compound interest pays interest on both the original amount and the interest already earned, so the balance grows faster each period.",
            "With compounding, each period's interest is added to the principal and itself earns interest in the next period.",
        ],
        [
            "Banks must publish the annual percentage rate of their savings accounts.",
            "Inflation reduces the purchasing power of money kept in cash.",
        ],
    ),
    (
        "why do leaves change colour in autumn",
        [
            "In autumn trees stop making green chlorophyll, revealing yellow and orange pigments, while some species make red anthocyanins.",
            "Shorter days and cooler nights make leaves break down chlorophyll, so the hidden carotenoid colours show through.",
        ],
        [
            "Deciduous forests attract many visitors in October.",
            "Evergreen conifers keep their needles through the winter.",
        ],
    ),
    (
        "how to speed up a slow laptop",
        [
            "Remove programs that start with the computer, uninstall software you do not use, free disk space and add memory or an SSD if it is old.",
            "Check the task manager for processes using the CPU, disable startup apps, and replace a hard disk with an SSD for the largest gain.",
        ],
        [
            "Laptop batteries lose capacity after a few hundred charge cycles.",
            "Many laptops now use processors that combine performance and efficiency cores.",
        ],
    ),
    (
        "what is photosynthesis",
        [
            "Photosynthesis is how plants use light energy to turn carbon dioxide and water into glucose, releasing oxygen.",
            "In chloroplasts, chlorophyll captures sunlight to make sugar from CO2 and water, with oxygen as a by-product.",
        ],
        [
            "Plants also need nitrogen and phosphorus from the soil.",
            "Algae in the oceans produce a large share of the world's oxygen.",
        ],
    ),
    (
        "how to calm down before a job interview",
        [
            "Prepare answers to common questions, arrive early, and take slow breaths in for four counts and out for six to calm your nerves.",
            "Practising the interview out loud with a friend and doing a few minutes of deep breathing beforehand reduces anxiety.",
        ],
        [
            "Interviewers often ask candidates to describe a past project.",
            "Some companies use several interview rounds, including a technical test.",
        ],
    ),
    (
        "what is the largest planet in the solar system",
        [
            "Jupiter is the largest planet in the solar system, more than eleven times Earth's diameter.",
            "The biggest planet orbiting the Sun is the gas giant Jupiter, with a mass over 300 times that of Earth.",
        ],
        [
            "Saturn's rings are made mostly of ice particles.",
            "Neptune was found using mathematical predictions of its orbit.",
        ],
    ),
    (
        "how to store fresh herbs",
        [
            "Keep soft herbs like basil and parsley in a jar of water like cut flowers, and wrap hardy herbs like thyme in a damp towel in the fridge.",
            "Trim the stems, stand leafy herbs in water with a loose bag over them, and refrigerate woody herbs wrapped in damp paper.",
        ],
        [
            "Herb gardens grow well on sunny windowsills.",
            "Dried oregano is common in Mediterranean cooking.",
        ],
    ),
]

FILLER = [
    "The committee met again on Tuesday to review the annual budget and the delays in delivery.",
    "Several readers wrote in to ask about the opening hours of the library during the holidays.",
    "The museum's new wing displays pottery and textiles from several centuries.",
    "A local team won the regional football tournament after a penalty shootout.",
    "The report lists the results of a survey on commuting habits in large cities.",
    "Maintenance work on the bridge will close one lane until the end of next month.",
]


def near_duplicate(text: str) -> str:
    """The same document with small edits (a typo fix, different punctuation)."""
    return text.replace(", ", " , ", 1).replace(".", " .", 1) + " "


def long_document(answer: str, rng: random.Random) -> str:
    """A long document (about 700 words) with the answer in the middle."""
    before = [rng.choice(FILLER) for _ in range(20)]
    after = [rng.choice(FILLER) for _ in range(20)]
    return " ".join(before + [answer] + after)


def build(seed: int = 7) -> list[dict]:
    """The dataset records, in topic order."""
    rng = random.Random(seed)
    records = []
    for t, (query, answers, partial) in enumerate(TOPICS):
        docs = [(a, 2) for a in answers] + [(p, 1) for p in partial]
        docs.append((near_duplicate(answers[0]), 2))
        docs.append((long_document(answers[1], rng), 2))
        others = [o for o in range(len(TOPICS)) if o != t]
        for o in rng.sample(others, 14):
            pool = TOPICS[o][1] + TOPICS[o][2]
            docs.append((rng.choice(pool), 0))
        rng.shuffle(docs)
        records.append(
            {
                "query_id": f"q{t + 1:02d}",
                "query": query,
                "documents": [d for d, _ in docs],
                "labels": [label for _, label in docs],
            }
        )
    return records


def main() -> None:
    """Write the JSONL next to this repository's data/sample/."""
    out = Path(__file__).resolve().parents[1] / "data" / "sample" / "rerank_sample.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for record in build():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
